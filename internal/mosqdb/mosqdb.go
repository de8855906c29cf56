// Package mosqdb parses mosquitto's persistence file (mosquitto.db, format
// versions 5 and 6: mosquitto 1.6 and 2.0) and returns its retained
// messages. The file is untrusted input: every length is checked against
// what is left of the file before anything is allocated, and an error
// returns nothing, so a caller never acts on half a file.
package mosqdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unicode/utf8"
)

// Limits on what a file may hold: a mosquitto.db is held in memory whole,
// and each stored message costs memory beyond its bytes.
const (
	MaxFileSize = 512 << 20
	MaxMessages = 1_000_000
)

// Chunk types (mosquitto's persist.h).
const (
	chunkCfg       = 1
	chunkMsgStore  = 2
	chunkClientMsg = 3
	chunkRetain    = 4
	chunkSub       = 5
	chunkClient    = 6
)

// Fixed sizes of the on-disk structs, C padding included.
const (
	headerLen   = 15 + 4 + 4 // magic, crc (unused, always 0), version
	chunkHdrLen = 8          // type, length (network order)
	cfgLen      = 16         // last_db_id u64, shutdown u8, dbid_size u8, padding
	msgFixedLen = 32         // store_id, expiry_time, payloadlen, 5 u16, qos, retain
	retainLen   = 8          // store_id
	dbidSize    = 8
	maxPayload  = 268435455 // MQTT's largest payload, mosquitto's own cap
)

var magic = []byte{0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o', ' ', 'd', 'b'}

// ErrEmpty is wrapped by the error for a zero-length file.
var ErrEmpty = errors.New("empty file")

// Error names the file and the byte offset where parsing stopped.
type Error struct {
	File   string
	Offset int
	Reason string
	Err    error // a sentinel such as ErrEmpty, or nil
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: offset %d: %s", e.File, e.Offset, e.Reason)
}

func (e *Error) Unwrap() error { return e.Err }

// UserProperty is an MQTT 5 user property.
type UserProperty struct{ Key, Val string }

// Properties are the MQTT 5 PUBLISH properties mosquitto keeps with a
// stored message.
type Properties struct {
	PayloadFormat         byte
	PayloadFormatSet      bool
	MessageExpiryInterval uint32 // as published; Message.Expiry is what counts
	ContentType           string
	ResponseTopic         string
	CorrelationData       []byte
	User                  []UserProperty
}

// Empty reports whether no property is set.
func (p *Properties) Empty() bool {
	return !p.PayloadFormatSet && p.MessageExpiryInterval == 0 && p.ContentType == "" &&
		p.ResponseTopic == "" && p.CorrelationData == nil && len(p.User) == 0
}

// Message is one retained message.
type Message struct {
	Topic      string
	Payload    []byte
	QoS        byte
	Expiry     int64 // absolute Unix time when it expires; 0 = never
	Properties Properties
	// Source is who published it, as mosquitto recorded it.
	SourceID, SourceUsername string
}

// DB is what a mosquitto.db holds that Moat imports, and counts of the rest.
type DB struct {
	Version  uint32
	Retained []Message // in file order
	// Chunks that are not retained messages (sessions, subscriptions,
	// queued messages) or retain entries whose message is gone, which
	// mosquitto itself drops on load.
	Sessions, Subscriptions, Queued, Dangling, Unknown int
}

// ReadFile reads and parses a mosquitto.db of at most MaxFileSize bytes.
func ReadFile(path string) (*DB, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Offset: MaxFileSize, Reason: fmt.Sprintf("file larger than %d bytes", MaxFileSize)}
	}
	return Parse(path, data)
}

type stored struct {
	msg  Message
	used bool // referenced by a retain chunk
}

// Parse parses data, the content of the file called name (used in errors).
// The returned messages do not alias data.
func Parse(name string, data []byte) (*DB, error) {
	p := parser{name: name, b: data, maxMessages: MaxMessages}
	db, err := p.parse()
	if err != nil {
		return nil, err
	}
	return db, nil
}

type parser struct {
	name        string
	b           []byte
	off         int
	maxMessages int
}

func (p *parser) errf(off int, format string, a ...any) error {
	return &Error{File: p.name, Offset: off, Reason: fmt.Sprintf(format, a...)}
}

func (p *parser) parse() (*DB, error) {
	if len(p.b) == 0 {
		return nil, &Error{File: p.name, Reason: "empty file (mosquitto writes a header even when it has nothing to store)", Err: ErrEmpty}
	}
	if len(p.b) < headerLen {
		if !bytes.HasPrefix(magic, p.b[:min(len(p.b), len(magic))]) {
			return nil, p.errf(0, "not a mosquitto persistence file (bad magic)")
		}
		return nil, p.errf(len(p.b), "truncated header (%d of %d bytes)", len(p.b), headerLen)
	}
	if !bytes.Equal(p.b[:15], magic) {
		return nil, p.errf(0, "not a mosquitto persistence file (bad magic)")
	}
	db := &DB{Version: binary.BigEndian.Uint32(p.b[19:23])}
	if db.Version != 5 && db.Version != 6 {
		return nil, p.errf(19, "format version %d not supported (mosquitto 1.6 writes 5, 2.0 writes 6)", db.Version)
	}
	p.off = headerLen
	byID := map[uint64]*stored{}
	var order []*stored
	topics := map[string]int{} // topic -> chunk offset of its retain entry
	sawCfg := false
	for p.off < len(p.b) {
		start := p.off
		if len(p.b)-p.off < chunkHdrLen {
			return nil, p.errf(start, "truncated chunk header (%d of %d bytes)", len(p.b)-p.off, chunkHdrLen)
		}
		typ := binary.BigEndian.Uint32(p.b[p.off:])
		n := binary.BigEndian.Uint32(p.b[p.off+4:])
		body := p.off + chunkHdrLen
		if uint64(n) > uint64(len(p.b)-body) {
			return nil, p.errf(start, "chunk type %d: length %d exceeds the %d bytes left (truncated file?)", typ, n, len(p.b)-body)
		}
		c := p.b[body : body+int(n)]
		p.off = body + int(n)
		if typ != chunkCfg && !sawCfg {
			return nil, p.errf(start, "chunk type %d before the config chunk", typ)
		}
		switch typ {
		case chunkCfg:
			if len(c) != cfgLen {
				return nil, p.errf(start, "config chunk: length %d, want %d", len(c), cfgLen)
			}
			if sawCfg {
				return nil, p.errf(start, "second config chunk")
			}
			if c[9] != dbidSize {
				return nil, p.errf(start, "config chunk: database id size %d, want %d (written on another kind of machine?)", c[9], dbidSize)
			}
			sawCfg = true
		case chunkMsgStore:
			id, s, err := p.msgStore(body, c)
			if err != nil {
				return nil, err
			}
			if len(byID) == p.maxMessages {
				return nil, p.errf(start, "more than %d messages", p.maxMessages)
			}
			if _, dup := byID[id]; dup {
				return nil, p.errf(start, "message store id %d appears twice", id)
			}
			byID[id] = s
		case chunkRetain:
			if len(c) != retainLen {
				return nil, p.errf(start, "retain chunk: length %d, want %d", len(c), retainLen)
			}
			s, ok := byID[binary.LittleEndian.Uint64(c)]
			if !ok {
				// mosquitto drops these on load: the message expired.
				db.Dangling++
				continue
			}
			if s.used {
				return nil, p.errf(start, "message %q is retained twice", s.msg.Topic)
			}
			if prev, dup := topics[s.msg.Topic]; dup {
				return nil, p.errf(start, "topic %q is retained twice (first at offset %d)", s.msg.Topic, prev)
			}
			if len(s.msg.Payload) == 0 {
				return nil, p.errf(start, "retained message on %q has an empty payload", s.msg.Topic)
			}
			s.used = true
			topics[s.msg.Topic] = start
			order = append(order, s)
		case chunkClient:
			db.Sessions++
		case chunkSub:
			db.Subscriptions++
		case chunkClientMsg:
			db.Queued++
		default:
			db.Unknown++ // mosquitto skips unknown chunks too
		}
	}
	if !sawCfg {
		return nil, p.errf(p.off, "no config chunk (truncated file?)")
	}
	db.Retained = make([]Message, 0, len(order))
	for _, s := range order {
		m := s.msg
		m.Payload = bytes.Clone(m.Payload)
		m.Properties.CorrelationData = bytes.Clone(m.Properties.CorrelationData)
		db.Retained = append(db.Retained, m)
	}
	return db, nil
}

// msgStore parses a message store chunk; off is c's offset in the file.
// Strings are copied, byte slices alias the file until parse returns.
func (p *parser) msgStore(off int, c []byte) (uint64, *stored, error) {
	if len(c) < msgFixedLen {
		return 0, nil, p.errf(off, "message chunk: length %d below the fixed %d bytes", len(c), msgFixedLen)
	}
	id := binary.LittleEndian.Uint64(c[0:])
	expiry := int64(binary.LittleEndian.Uint64(c[8:]))
	payloadLen := binary.BigEndian.Uint32(c[16:])
	idLen := int(binary.BigEndian.Uint16(c[22:]))
	userLen := int(binary.BigEndian.Uint16(c[24:]))
	topicLen := int(binary.BigEndian.Uint16(c[26:]))
	qos, retain := c[30], c[31]
	if payloadLen > maxPayload {
		return 0, nil, p.errf(off+16, "message %d: payload length %d above MQTT's maximum", id, payloadLen)
	}
	need := uint64(msgFixedLen) + uint64(idLen) + uint64(userLen) + uint64(topicLen) + uint64(payloadLen)
	if need > uint64(len(c)) {
		return 0, nil, p.errf(off, "message %d: fields need %d bytes, chunk has %d", id, need, len(c))
	}
	if qos > 2 {
		return 0, nil, p.errf(off+30, "message %d: QoS %d", id, qos)
	}
	if retain > 1 {
		return 0, nil, p.errf(off+31, "message %d: retain flag %d", id, retain)
	}
	if expiry < 0 {
		return 0, nil, p.errf(off+8, "message %d: negative expiry time %d", id, expiry)
	}
	r := c[msgFixedLen:]
	take := func(n int) []byte { v := r[:n]; r = r[n:]; return v }
	s := &stored{}
	s.msg.SourceID = string(take(idLen))
	s.msg.SourceUsername = string(take(userLen))
	topicOff := off + len(c) - len(r)
	topic := take(topicLen)
	s.msg.Payload = take(int(payloadLen))
	s.msg.QoS = qos
	s.msg.Expiry = expiry
	if err := checkTopic(topic); err != nil {
		return 0, nil, p.errf(topicOff, "message %d: topic %s", id, err)
	}
	s.msg.Topic = string(topic)
	if len(r) > 0 {
		propOff := off + len(c) - len(r)
		props, err := parseProperties(r)
		if err != nil {
			return 0, nil, p.errf(propOff, "message %d on %q: properties: %s", id, s.msg.Topic, err)
		}
		s.msg.Properties = props
	}
	return id, s, nil
}

func checkTopic(t []byte) error {
	switch {
	case len(t) == 0:
		return errors.New("is empty")
	case !utf8.Valid(t):
		return errors.New("is not valid UTF-8")
	case bytes.ContainsAny(t, "+#\x00"):
		return fmt.Errorf("%q contains a wildcard or NUL", truncate(string(t)))
	}
	return nil
}

func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// MQTT 5 property identifiers that a stored PUBLISH may carry.
const (
	propPayloadFormat   = 0x01
	propMessageExpiry   = 0x02
	propContentType     = 0x03
	propResponseTopic   = 0x08
	propCorrelationData = 0x09
	propSubscriptionID  = 0x0B
	propTopicAlias      = 0x23
	propUser            = 0x26
)

// parseProperties reads mosquitto's property block: a variable byte
// integer length followed by exactly that many bytes of properties.
func parseProperties(b []byte) (Properties, error) {
	var out Properties
	n, k, err := varint(b)
	if err != nil {
		return out, err
	}
	b = b[k:]
	if uint64(n) != uint64(len(b)) {
		return out, fmt.Errorf("block length %d, %d bytes present", n, len(b))
	}
	seen := map[byte]bool{}
	for len(b) > 0 {
		id := b[0]
		b = b[1:]
		if id != propUser && id != propSubscriptionID {
			if seen[id] {
				return out, fmt.Errorf("property %#x appears twice", id)
			}
			seen[id] = true
		}
		var err error
		switch id {
		case propPayloadFormat:
			if len(b) < 1 || b[0] > 1 {
				return out, errors.New("bad payload format indicator")
			}
			out.PayloadFormat, out.PayloadFormatSet, b = b[0], true, b[1:]
		case propMessageExpiry:
			if len(b) < 4 {
				return out, errors.New("short message expiry interval")
			}
			out.MessageExpiryInterval, b = binary.BigEndian.Uint32(b), b[4:]
		case propContentType:
			out.ContentType, b, err = utf8Str(b)
		case propResponseTopic:
			out.ResponseTopic, b, err = utf8Str(b)
		case propCorrelationData:
			var v []byte
			v, b, err = binStr(b)
			out.CorrelationData = v
			if err == nil && v == nil {
				out.CorrelationData = []byte{}
			}
		case propSubscriptionID:
			// Belongs to one delivery, not to the retained message.
			var k int
			_, k, err = varint(b)
			b = b[k:]
		case propTopicAlias:
			if len(b) < 2 {
				return out, errors.New("short topic alias")
			}
			b = b[2:]
		case propUser:
			var kv UserProperty
			if kv.Key, b, err = utf8Str(b); err == nil {
				kv.Val, b, err = utf8Str(b)
			}
			out.User = append(out.User, kv)
		default:
			return out, fmt.Errorf("property %#x is not a PUBLISH property", id)
		}
		if err != nil {
			return out, fmt.Errorf("property %#x: %w", id, err)
		}
	}
	return out, nil
}

func varint(b []byte) (uint32, int, error) {
	var v uint32
	for i := 0; i < 4; i++ {
		if i >= len(b) {
			return 0, 0, errors.New("truncated variable byte integer")
		}
		v |= uint32(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errors.New("variable byte integer longer than 4 bytes")
}

func binStr(b []byte) ([]byte, []byte, error) {
	if len(b) < 2 {
		return nil, b, errors.New("truncated length")
	}
	n := int(binary.BigEndian.Uint16(b))
	if n > len(b)-2 {
		return nil, b, fmt.Errorf("length %d exceeds the %d bytes left", n, len(b)-2)
	}
	if n == 0 {
		return nil, b[2:], nil
	}
	return b[2 : 2+n], b[2+n:], nil
}

func utf8Str(b []byte) (string, []byte, error) {
	v, rest, err := binStr(b)
	if err != nil {
		return "", b, err
	}
	if !utf8.Valid(v) || bytes.IndexByte(v, 0) >= 0 {
		return "", b, errors.New("not a valid UTF-8 string")
	}
	return string(v), rest, nil
}
