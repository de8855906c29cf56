package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// schemaVersion is the layout of every record below. A store written with
// another version is refused rather than guessed at.
const schemaVersion = 1

var (
	errShort     = errors.New("truncated record")
	errTrailing  = errors.New("trailing bytes after record")
	errNonCanon  = errors.New("non-canonical integer")
	errRange     = errors.New("value out of range")
	errFlags     = errors.New("unknown flag bits")
	errCount     = errors.New("implausible element count")
	errBadKey    = errors.New("malformed key")
	errKeyTopic  = errors.New("record topic differs from its key")
	maxSubID     = uint64(268435455) // MQTT variable byte integer maximum
	maxUint32u64 = uint64(math.MaxUint32)
)

type encoder struct{ b []byte }

func (e *encoder) u8(v byte)      { e.b = append(e.b, v) }
func (e *encoder) u16(v uint16)   { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *encoder) uv(v uint64)    { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) sv(v int64)     { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) bytes(p []byte) { e.uv(uint64(len(p))); e.b = append(e.b, p...) }
func (e *encoder) str(s string)   { e.uv(uint64(len(s))); e.b = append(e.b, s...) }
func (e *encoder) user(u []packets.UserProperty) {
	e.uv(uint64(len(u)))
	for _, p := range u {
		e.str(p.Key)
		e.str(p.Val)
	}
}

// decoder reads untrusted bytes: every read is bounds-checked, the first
// error sticks and later reads return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) u8() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.fail(errShort)
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u16() uint16 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 2 {
		d.fail(errShort)
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	if n != len(binary.AppendUvarint(nil, v)) {
		d.fail(errNonCanon)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvMax(max uint64) uint64 {
	v := d.uv()
	if v > max {
		d.fail(errRange)
		return 0
	}
	return v
}

func (d *decoder) sv() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	if n != len(binary.AppendVarint(nil, v)) {
		d.fail(errNonCanon)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// raw returns a length-prefixed slice aliasing the input.
func (d *decoder) raw() []byte {
	n := d.uv()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// bytes copies, because bbolt's memory is only valid inside its transaction.
func (d *decoder) bytes() []byte {
	v := d.raw()
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}

func (d *decoder) str() string { return string(d.raw()) }

func (d *decoder) count(minElem int) int {
	n := d.uv()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/minElem) {
		d.fail(errCount)
		return 0
	}
	return int(n)
}

func (d *decoder) user() []packets.UserProperty {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	u := make([]packets.UserProperty, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		u = append(u, packets.UserProperty{Key: d.str(), Val: d.str()})
	}
	return u
}

func (d *decoder) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = errTrailing
	}
	return d.err
}

const (
	msgRetain = 1 << iota
	msgDup
	msgPayloadFormatFlag
	msgFlagsAll = msgRetain | msgDup | msgPayloadFormatFlag
)

// appendMessage encodes what a retained or in-flight packet needs to be
// rebuilt: header, timestamps (Created/Expiry, so a v5 message's own expiry
// survives restarts), topic, payload and the v5 publish properties.
func appendMessage(b []byte, pk *packets.Packet) []byte {
	e := encoder{b: b}
	e.u8(pk.FixedHeader.Type)
	var f byte
	if pk.FixedHeader.Retain {
		f |= msgRetain
	}
	if pk.FixedHeader.Dup {
		f |= msgDup
	}
	if pk.Properties.PayloadFormatFlag {
		f |= msgPayloadFormatFlag
	}
	e.u8(f)
	e.u8(pk.FixedHeader.Qos)
	e.u8(pk.ProtocolVersion)
	e.u8(pk.ReasonCode)
	e.u16(pk.PacketID)
	e.sv(pk.Created)
	e.sv(pk.Expiry)
	e.u8(pk.Properties.PayloadFormat)
	e.uv(uint64(pk.Properties.MessageExpiryInterval))
	e.str(pk.TopicName)
	e.str(pk.Origin)
	e.str(pk.Properties.ContentType)
	e.str(pk.Properties.ResponseTopic)
	e.bytes(pk.Properties.CorrelationData)
	e.user(pk.Properties.User)
	e.uv(uint64(len(pk.Properties.SubscriptionIdentifier)))
	for _, id := range pk.Properties.SubscriptionIdentifier {
		e.uv(uint64(id))
	}
	e.bytes(pk.Payload)
	return e.b
}

func decodeMessage(b []byte) (packets.Packet, error) {
	d := decoder{b: b}
	var pk packets.Packet
	pk.FixedHeader.Type = d.u8()
	f := d.u8()
	pk.FixedHeader.Qos = d.u8()
	pk.ProtocolVersion = d.u8()
	pk.ReasonCode = d.u8()
	pk.PacketID = d.u16()
	pk.Created = d.sv()
	pk.Expiry = d.sv()
	pk.Properties.PayloadFormat = d.u8()
	pk.Properties.MessageExpiryInterval = uint32(d.uvMax(maxUint32u64))
	pk.TopicName = d.str()
	pk.Origin = d.str()
	pk.Properties.ContentType = d.str()
	pk.Properties.ResponseTopic = d.str()
	pk.Properties.CorrelationData = d.bytes()
	pk.Properties.User = d.user()
	if n := d.count(1); n > 0 {
		pk.Properties.SubscriptionIdentifier = make([]int, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			pk.Properties.SubscriptionIdentifier = append(pk.Properties.SubscriptionIdentifier, int(d.uvMax(maxSubID)))
		}
	}
	pk.Payload = d.bytes()
	if err := d.end(); err != nil {
		return packets.Packet{}, err
	}
	if pk.FixedHeader.Type < packets.Connect || pk.FixedHeader.Type > packets.Auth || pk.FixedHeader.Qos > 2 {
		return packets.Packet{}, errRange
	}
	if f&^msgFlagsAll != 0 {
		return packets.Packet{}, errFlags
	}
	pk.FixedHeader.Retain = f&msgRetain != 0
	pk.FixedHeader.Dup = f&msgDup != 0
	pk.Properties.PayloadFormatFlag = f&msgPayloadFormatFlag != 0
	return pk, nil
}

const (
	clClean = 1 << iota
	clSessionExpiryFlag
	clRequestProblemInfoFlag
	clWillRetain
	clFlagsAll = clClean | clSessionExpiryFlag | clRequestProblemInfoFlag | clWillRetain
)

// clientRecord is the part of a persistent session that is not a
// subscription or an in-flight message. Authentication data is not kept.
type clientRecord struct {
	Listener        string
	Username        []byte
	Clean           bool
	ProtocolVersion byte
	Props           packets.Properties // only the CONNECT fields below are kept
	Will            mqtt.Will
}

func clientFrom(cl *mqtt.Client) clientRecord {
	p := cl.Properties.Props
	return clientRecord{
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Props: packets.Properties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			AuthenticationMethod:      p.AuthenticationMethod,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			MaximumPacketSize:         p.MaximumPacketSize,
			User:                      p.User,
		},
		Will: cl.Properties.Will,
	}
}

func appendClient(b []byte, c *clientRecord) []byte {
	e := encoder{b: b}
	var f byte
	if c.Clean {
		f |= clClean
	}
	if c.Props.SessionExpiryIntervalFlag {
		f |= clSessionExpiryFlag
	}
	if c.Props.RequestProblemInfoFlag {
		f |= clRequestProblemInfoFlag
	}
	if c.Will.Retain {
		f |= clWillRetain
	}
	e.u8(f)
	e.u8(c.ProtocolVersion)
	e.str(c.Listener)
	e.bytes(c.Username)
	e.uv(uint64(c.Props.SessionExpiryInterval))
	e.u8(c.Props.RequestProblemInfo)
	e.u8(c.Props.RequestResponseInfo)
	e.u16(c.Props.ReceiveMaximum)
	e.u16(c.Props.TopicAliasMaximum)
	e.uv(uint64(c.Props.MaximumPacketSize))
	e.str(c.Props.AuthenticationMethod)
	e.user(c.Props.User)
	e.uv(uint64(c.Will.Flag))
	e.u8(c.Will.Qos)
	e.uv(uint64(c.Will.WillDelayInterval))
	e.str(c.Will.TopicName)
	e.bytes(c.Will.Payload)
	e.user(c.Will.User)
	return e.b
}

func decodeClient(b []byte) (clientRecord, error) {
	d := decoder{b: b}
	var c clientRecord
	f := d.u8()
	c.ProtocolVersion = d.u8()
	c.Listener = d.str()
	c.Username = d.bytes()
	c.Props.SessionExpiryInterval = uint32(d.uvMax(maxUint32u64))
	c.Props.RequestProblemInfo = d.u8()
	c.Props.RequestResponseInfo = d.u8()
	c.Props.ReceiveMaximum = d.u16()
	c.Props.TopicAliasMaximum = d.u16()
	c.Props.MaximumPacketSize = uint32(d.uvMax(maxUint32u64))
	c.Props.AuthenticationMethod = d.str()
	c.Props.User = d.user()
	c.Will.Flag = uint32(d.uvMax(1))
	c.Will.Qos = d.u8()
	c.Will.WillDelayInterval = uint32(d.uvMax(maxUint32u64))
	c.Will.TopicName = d.str()
	c.Will.Payload = d.bytes()
	c.Will.User = d.user()
	if err := d.end(); err != nil {
		return clientRecord{}, err
	}
	if f&^clFlagsAll != 0 {
		return clientRecord{}, errFlags
	}
	if c.Will.Qos > 2 {
		return clientRecord{}, errRange
	}
	c.Clean = f&clClean != 0
	c.Props.SessionExpiryIntervalFlag = f&clSessionExpiryFlag != 0
	c.Props.RequestProblemInfoFlag = f&clRequestProblemInfoFlag != 0
	c.Will.Retain = f&clWillRetain != 0
	return c, nil
}

const (
	subNoLocal = 1 << iota
	subRetainAsPublished
	subFlagsAll = subNoLocal | subRetainAsPublished
)

// appendSub encodes a subscription; its filter lives in the key.
func appendSub(b []byte, s *packets.Subscription) []byte {
	e := encoder{b: b}
	var f byte
	if s.NoLocal {
		f |= subNoLocal
	}
	if s.RetainAsPublished {
		f |= subRetainAsPublished
	}
	e.u8(f)
	e.u8(s.Qos)
	e.u8(s.RetainHandling)
	e.uv(uint64(s.Identifier))
	return e.b
}

func decodeSub(b []byte) (packets.Subscription, error) {
	d := decoder{b: b}
	var s packets.Subscription
	f := d.u8()
	s.Qos = d.u8()
	s.RetainHandling = d.u8()
	s.Identifier = int(d.uvMax(maxSubID))
	if err := d.end(); err != nil {
		return packets.Subscription{}, err
	}
	if f&^subFlagsAll != 0 {
		return packets.Subscription{}, errFlags
	}
	if s.Qos > 2 || s.RetainHandling > 2 {
		return packets.Subscription{}, errRange
	}
	s.NoLocal = f&subNoLocal != 0
	s.RetainAsPublished = f&subRetainAsPublished != 0
	return s, nil
}

// Session keys start with the client id, length-prefixed so one client's
// prefix can never be another's.
func clientPrefix(id string) []byte {
	e := encoder{}
	e.str(id)
	return e.b
}

func subKey(id, filter string) []byte { return append(clientPrefix(id), filter...) }

func inflightKey(id string, pid uint16) []byte {
	return binary.BigEndian.AppendUint16(clientPrefix(id), pid)
}

// splitKey returns the client id and the rest of a session key.
func splitKey(k []byte) (string, []byte, error) {
	d := decoder{b: k}
	id := d.raw()
	if d.err != nil {
		return "", nil, errBadKey
	}
	return string(id), d.b, nil
}

func describeKey(k []byte) string {
	const max = 64
	if len(k) > max {
		return fmt.Sprintf("%q...", k[:max])
	}
	return fmt.Sprintf("%q", k)
}
