package cluster

import (
	"errors"
	"fmt"
	"strings"
)

// MaxSubject bounds an encoded subject: nats-server refuses protocol lines
// over 4096 bytes (max_control_line), and the line also carries the reply
// subject and sizes. A topic whose subject would be longer does not cross
// nodes (Publish refuses it); a filter that long is widened (see
// FilterSubjects).
const MaxSubject = 2048

// ErrTopicTooLong is returned for a topic whose subject exceeds MaxSubject.
var ErrTopicTooLong = errors.New("topic too long for the cluster backplane")

// Subjects maps MQTT topics and filters onto the NATS subjects of one
// cluster: "moat.<cluster>.<kind>.<level>.<level>...", where kind is 0
// for QoS 0 (core NATS only) and 1 for QoS 1/2 (also stored by the
// cluster's stream). A filter's subjects match both kinds.
//
// Each MQTT level becomes one NATS token: ASCII letters, digits and '-'
// stay; every other byte becomes "_XX" (upper-case hex, '_' included); an
// empty level becomes "=". Tokens so never contain '.', '*', '>', spaces or
// '$', are never empty, and one token decodes to one level only: different
// topics never share a subject. The same alphabet is valid in JetStream
// key-value keys, so Key uses the same encoding.
type Subjects struct {
	prefix string // "moat.<cluster>."
}

// NewSubjects returns the mapping for the cluster named name.
func NewSubjects(name string) Subjects {
	var b strings.Builder
	b.WriteString("moat.")
	encodeLevel(&b, name)
	b.WriteByte('.')
	return Subjects{prefix: b.String()}
}

// Prefix is the common start of every subject of the cluster.
func (s Subjects) Prefix() string { return s.prefix }

// Durable is the subject matching every QoS 1/2 message of the cluster.
func (s Subjects) Durable() string { return s.prefix + "1.>" }

// Topic returns the subject of an MQTT topic name; durable for QoS 1/2.
func (s Subjects) Topic(topic string, durable bool) (string, error) {
	var b strings.Builder
	b.Grow(len(s.prefix) + len(topic) + 8)
	b.WriteString(s.prefix)
	if durable {
		b.WriteString("1.")
	} else {
		b.WriteString("0.")
	}
	encodeTopic(&b, topic)
	if b.Len() > MaxSubject {
		return "", fmt.Errorf("%w: %d bytes encoded, limit %d", ErrTopicTooLong, b.Len(), MaxSubject)
	}
	return b.String(), nil
}

// Key returns the key-value key of an MQTT topic name (no cluster prefix:
// the bucket is the cluster's own).
func Key(topic string) string {
	var b strings.Builder
	encodeTopic(&b, topic)
	return b.String()
}

// TopicOfKey reverses Key.
func TopicOfKey(key string) (string, error) { return decodeTokens(key) }

// TopicOf returns the MQTT topic of a subject of the cluster.
func (s Subjects) TopicOf(subject string) (string, error) {
	rest, ok := strings.CutPrefix(subject, s.prefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, "0.")
		if !ok {
			rest, ok = strings.CutPrefix(rest, "1.")
		}
	}
	if !ok {
		return "", errors.New("subject outside the cluster's prefix")
	}
	return decodeTokens(rest)
}

// FilterSubjects returns the subjects that together match at least every
// topic the MQTT filter matches: '+' becomes '*', '#' becomes '>', and a
// trailing "/#", which also matches its parent level, gives both the
// parent's subject and the wildcard one. A "$share/<group>/" prefix is
// removed. A filter too long to subscribe to is cut at a level boundary
// and ended with '>': the node then receives more than it needs, and
// mochi's own matching delivers only what matches.
func (s Subjects) FilterSubjects(filter string) []string {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			filter = f
		}
	}
	levels := strings.Split(filter, "/")
	var b strings.Builder
	b.WriteString(s.prefix)
	b.WriteString("*.")
	var out []string
	for i, l := range levels {
		if i > 0 {
			b.WriteByte('.')
		}
		mark := b.Len()
		switch l {
		case "#":
			if i > 0 {
				// "a/#" matches "a" too.
				out = append(out, b.String()[:mark-1])
			}
			b.WriteByte('>')
			return append(out, b.String())
		case "+":
			b.WriteByte('*')
		default:
			encodeLevel(&b, l)
		}
		if b.Len() > MaxSubject-2 {
			// Widen: everything below the levels that fit.
			return append(out, b.String()[:mark]+">")
		}
	}
	return append(out, b.String())
}

func encodeTopic(b *strings.Builder, topic string) {
	for i, l := range strings.Split(topic, "/") {
		if i > 0 {
			b.WriteByte('.')
		}
		encodeLevel(b, l)
	}
}

const hexDigits = "0123456789ABCDEF"

func encodeLevel(b *strings.Builder, l string) {
	if l == "" {
		b.WriteByte('=')
		return
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('_')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
}

var errBadToken = errors.New("not an encoded topic level")

func decodeTokens(s string) (string, error) {
	var b strings.Builder
	b.Grow(len(s))
	for i, tok := range strings.Split(s, ".") {
		if i > 0 {
			b.WriteByte('/')
		}
		if tok == "=" {
			continue
		}
		if tok == "" {
			return "", errBadToken
		}
		for j := 0; j < len(tok); j++ {
			c := tok[j]
			switch {
			case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-':
				b.WriteByte(c)
			case c == '_' && j+2 < len(tok) && isUpperHex(tok[j+1]) && isUpperHex(tok[j+2]):
				v := unhex(tok[j+1])<<4 | unhex(tok[j+2])
				if isPlain(v) {
					return "", errBadToken // not canonical: one level, one token
				}
				b.WriteByte(v)
				j += 2
			default:
				return "", errBadToken
			}
		}
	}
	return b.String(), nil
}

func isPlain(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-'
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}
