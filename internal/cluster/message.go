package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Message is an MQTT publication as it crosses nodes.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
	// Origin is the publishing client's id, so that a no-local
	// subscription of the same client id on another node skips it.
	Origin string
	// Node is the publishing node (set by Publish).
	Node string
	// Created is the Unix time the first node accepted it.
	Created int64
	Props   Props
	// Shared is set on a message received for one member of a shared
	// subscription: the "$share/<group>/<filter>" it is for (NATS chose
	// this node for it).
	Shared string
}

// Props are the MQTT 5 properties a publication carries to subscribers.
type Props struct {
	PayloadFormat    byte
	PayloadFormatSet bool
	// MessageExpiry is the message expiry interval in seconds (0: none).
	MessageExpiry   uint32
	ContentType     string
	ResponseTopic   string
	CorrelationData []byte
	User            []UserProperty
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// envelopeVersion is the first byte of every encoded message; a node
// refuses versions it does not know rather than misreading them.
const envelopeVersion = 1

const (
	flagRetain = 1 << 2
	flagPFSet  = 1 << 3
)

// maxUserProperties bounds what a decoder accepts from the wire.
const maxUserProperties = 1 << 16

var errEnvelope = errors.New("malformed cluster message")

// encode serialises everything but the topic (the subject carries it).
func (m *Message) encode() []byte {
	n := 32 + len(m.Node) + len(m.Origin) + len(m.Props.ContentType) + len(m.Props.ResponseTopic) +
		len(m.Props.CorrelationData) + len(m.Payload)
	for _, u := range m.Props.User {
		n += 4 + len(u.Key) + len(u.Value)
	}
	b := make([]byte, 0, n)
	b = append(b, envelopeVersion)
	flags := m.QoS & 3
	if m.Retain {
		flags |= flagRetain
	}
	if m.Props.PayloadFormatSet {
		flags |= flagPFSet
	}
	b = append(b, flags, m.Props.PayloadFormat)
	b = binary.AppendVarint(b, m.Created)
	b = binary.AppendUvarint(b, uint64(m.Props.MessageExpiry))
	b = appendString(b, m.Node)
	b = appendString(b, m.Origin)
	b = appendString(b, m.Props.ContentType)
	b = appendString(b, m.Props.ResponseTopic)
	b = appendString(b, string(m.Props.CorrelationData))
	b = binary.AppendUvarint(b, uint64(len(m.Props.User)))
	for _, u := range m.Props.User {
		b = appendString(b, u.Key)
		b = appendString(b, u.Value)
	}
	return append(b, m.Payload...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeMessage reads an encoded message; topic comes from the subject.
// The input is untrusted (anything on the NATS account can publish).
func decodeMessage(topic string, b []byte) (*Message, error) {
	r := reader{b: b}
	if v := r.byte(); v != envelopeVersion {
		return nil, fmt.Errorf("%w: version %d", errEnvelope, v)
	}
	flags := r.byte()
	m := &Message{Topic: topic, QoS: flags & 3, Retain: flags&flagRetain != 0}
	m.Props.PayloadFormatSet = flags&flagPFSet != 0
	m.Props.PayloadFormat = r.byte()
	m.Created = r.varint()
	exp := r.uvarint()
	if exp > 1<<32-1 {
		r.err = errEnvelope
	}
	m.Props.MessageExpiry = uint32(exp)
	m.Node = r.string()
	m.Origin = r.string()
	m.Props.ContentType = r.string()
	m.Props.ResponseTopic = r.string()
	if cd := r.string(); cd != "" {
		m.Props.CorrelationData = []byte(cd)
	}
	n := r.uvarint()
	if n > maxUserProperties || n > uint64(len(r.b)) {
		r.err = errEnvelope
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		m.Props.User = append(m.Props.User, UserProperty{Key: r.string(), Value: r.string()})
	}
	if r.err != nil {
		return nil, r.err
	}
	if m.QoS > 2 || flags&^(3|flagRetain|flagPFSet) != 0 {
		return nil, fmt.Errorf("%w: flags %#x", errEnvelope, flags)
	}
	m.Payload = append(make([]byte, 0, len(r.b)), r.b...)
	return m, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errEnvelope
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errEnvelope
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errEnvelope
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errEnvelope
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
