package listen

import (
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Errors returned by the framing reader; the session ends with them.
var (
	ErrPacketTooLarge     = errors.New("mqtt packet exceeds the size limit")
	ErrMalformedLength    = errors.New("mqtt remaining length longer than 4 bytes")
	ErrFirstNotConnect    = errors.New("first mqtt packet is not CONNECT")
	ErrMalformedConnect   = errors.New("malformed mqtt CONNECT")
	ErrMalformedSubscribe = errors.New("malformed mqtt SUBSCRIBE")
	// ErrConnectProtocol is an MQTT 5 CONNECT whose properties break the
	// protocol (a property given twice, Receive Maximum 0...); the client
	// was sent CONNACK 0x82.
	ErrConnectProtocol = errors.New("mqtt 5 CONNECT properties violate the protocol")
	// ErrSubscribeProtocol is an MQTT 5 SUBSCRIBE whose properties break
	// the protocol (Subscription Identifier twice or 0).
	ErrSubscribeProtocol = errors.New("mqtt 5 SUBSCRIBE properties violate the protocol")
)

const (
	typeConnect   = 1
	typeSubscribe = 8

	// Held packets larger than this do not keep their buffer between packets.
	keepHoldCap = 4096
)

// frameConn sits between the network and mochi. It follows the MQTT framing
// of the inbound stream so that it can refuse, before mochi allocates or
// decodes anything, packets over the size limit, remaining lengths longer
// than 4 bytes (mochi keeps reading continuation bytes), and SUBSCRIBE
// packets whose structure would make mochi's SubscribeDecode index past the
// end of the buffer (mochi #501).
//
// Most bytes are passed through in place: only CONNECT (to learn the
// protocol version) and SUBSCRIBE packets are held back until complete and
// checked. PUBLISH payloads are never copied.
type frameConn struct {
	net.Conn
	max          int           // whole-packet limit in bytes, 0 = none
	writeTimeout time.Duration // bound of one write
	readDL       atomic.Int64  // read deadline last set, Unix ns (0: none)
	writeDL      atomic.Int64  // write deadline last set, Unix ns
	ord          ordered       // writes held behind durability barriers (ordered.go)

	// Fixed header being parsed.
	hdr  [5]byte
	hdrN int
	rem  int // body bytes left of the current packet

	held      bool // the current packet is being collected in hold
	hold      []byte
	connected bool // first packet (CONNECT) seen
	v5        bool

	out  []byte // a checked held packet waiting to be handed on
	pend []byte // bytes read after a held packet, not parsed yet
	rerr error  // read error deferred until buffered bytes are drained
	err  error  // framing violation; sticky
}

func newFrameConn(c net.Conn, maxPacket int, writeTimeout time.Duration) *frameConn {
	if writeTimeout <= 0 {
		writeTimeout = DefaultWriteTimeout
	}
	return &frameConn{Conn: c, max: maxPacket, writeTimeout: writeTimeout}
}

// DefaultWriteTimeout bounds one write. mochi sets no write deadline, so a
// client that stops reading would otherwise block a DISCONNECT (at
// shutdown or after a reload) for ever once its TCP window is full.
const DefaultWriteTimeout = 15 * time.Second

// Write writes under the write timeout. Re-arming a deadline costs a
// runtime timer update, so it is done only when less than half of the
// timeout is left.
func (c *frameConn) Write(p []byte) (int, error) {
	if held, err := c.holdWrite(p); held {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.writeNow(p)
}

func (c *frameConn) writeNow(p []byte) (int, error) {
	now := time.Now()
	if dl := c.writeDL.Load(); dl-now.UnixNano() < int64(c.writeTimeout/2) {
		next := now.Add(c.writeTimeout)
		c.writeDL.Store(next.UnixNano())
		_ = c.Conn.SetWriteDeadline(next)
	}
	return c.Conn.Write(p)
}

// SetDeadline sets the read deadline only: mochi calls it with its
// keepalive deadline on every packet, and write deadlines are the write
// timeout's.
func (c *frameConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline skips extensions of less than a second while more than
// four seconds are left: mochi moves the deadline on every packet, and
// each move is a runtime timer update. The deadline then falls at most a
// second before the one asked for.
func (c *frameConn) SetReadDeadline(t time.Time) error {
	prev := c.readDL.Load()
	if !t.IsZero() && prev != 0 {
		ahead := t.UnixNano() - prev
		if ahead >= 0 && ahead < int64(time.Second) && prev-time.Now().UnixNano() > int64(4*time.Second) {
			return nil
		}
	}
	if t.IsZero() {
		c.readDL.Store(0)
	} else {
		c.readDL.Store(t.UnixNano())
	}
	return c.Conn.SetReadDeadline(t)
}

// Read hands on only bytes that belong to packets judged safe so far.
func (c *frameConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(c.out) > 0 {
			n := copy(p, c.out)
			c.out = c.out[n:]
			if len(c.out) == 0 {
				c.releaseHold()
			}
			return n, nil
		}
		if c.err != nil {
			return 0, c.err
		}
		var chunk []byte
		switch {
		case len(c.pend) > 0:
			n := copy(p, c.pend)
			c.pend = c.pend[n:]
			chunk = p[:n]
		case c.rerr != nil:
			return 0, c.rerr
		default:
			n, err := c.Conn.Read(p)
			if n == 0 {
				return 0, err
			}
			c.rerr = err
			chunk = p[:n]
		}
		k, rest := c.scan(chunk)
		if len(rest) > 0 {
			c.pushPending(rest)
		}
		if k > 0 {
			return k, nil
		}
	}
}

// pushPending puts unparsed bytes back in front of any still pending.
func (c *frameConn) pushPending(rest []byte) {
	if len(c.pend) == 0 {
		c.pend = append(c.pend[:0], rest...)
		return
	}
	b := make([]byte, 0, len(rest)+len(c.pend))
	b = append(b, rest...)
	c.pend = append(b, c.pend...)
}

func (c *frameConn) releaseHold() {
	if cap(c.hold) > keepHoldCap {
		c.hold = nil
		return
	}
	c.hold = c.hold[:0]
}

// scan advances the framing state over chunk. It returns how many leading
// bytes of chunk may be passed on now, and, when a held packet completed
// inside chunk, the bytes after it (left unparsed). On a violation c.err is
// set and only the bytes before the offending packet position pass.
func (c *frameConn) scan(chunk []byte) (pass int, rest []byte) {
	hdrStart := -1 // where the current fixed header began in chunk, if it did
	i := 0
	for i < len(chunk) {
		if c.hdrN == 0 || c.rem < 0 {
			// Fixed header bytes are staged in hold until the header is
			// checked, so mochi never sees the length of a refused packet.
			b := chunk[i]
			if c.hdrN == 0 {
				hdrStart = i
				typ := b >> 4
				if !c.connected && typ != typeConnect {
					c.err = ErrFirstNotConnect
					return pass, nil
				}
				c.held = (!c.connected && typ == typeConnect) || typ == typeSubscribe
				c.rem = -1
				c.hold = c.hold[:0]
			}
			i++
			c.hdr[c.hdrN] = b
			c.hdrN++
			c.hold = append(c.hold, b)
			if c.hdrN == 1 {
				continue
			}
			if b&0x80 != 0 {
				if c.hdrN == len(c.hdr) {
					c.err = ErrMalformedLength
					return pass, nil
				}
				continue
			}
			n := 0
			for j := c.hdrN - 1; j >= 1; j-- {
				n = n<<7 | int(c.hdr[j]&0x7f)
			}
			if c.max > 0 && c.hdrN+n > c.max {
				c.err = ErrPacketTooLarge
				return pass, nil
			}
			c.rem = n
			if !c.held {
				if hdrStart < 0 {
					// The header spans reads: hand it on as a unit and
					// parse the rest of chunk afterwards.
					c.out = c.hold
					if n == 0 {
						c.finishPacket(nil)
					}
					return pass, chunk[i:]
				}
				pass = i
				c.hold = c.hold[:0]
			}
			if n == 0 {
				if done, r := c.finishPacket(chunk[i:]); done {
					return pass, r
				}
				if c.err != nil {
					return pass, nil
				}
			}
			continue
		}

		// Packet body.
		take := min(c.rem, len(chunk)-i)
		if c.held {
			c.hold = append(c.hold, chunk[i:i+take]...)
		}
		i += take
		c.rem -= take
		if !c.held {
			pass = i
		}
		if c.rem == 0 {
			if done, r := c.finishPacket(chunk[i:]); done {
				return pass, r
			}
			if c.err != nil {
				return pass, nil
			}
		}
	}
	return pass, nil
}

// finishPacket ends the current packet. For a held packet it checks it and
// queues it for delivery; done tells scan to stop and return after.
func (c *frameConn) finishPacket(after []byte) (done bool, rest []byte) {
	held := c.held
	c.hdrN, c.rem, c.held = 0, 0, false
	if !held {
		return false, nil
	}
	hlen := 1
	for hlen < len(c.hold) && c.hold[hlen]&0x80 != 0 {
		hlen++
	}
	hlen++
	body := c.hold[hlen:]
	switch c.hold[0] >> 4 {
	case typeConnect:
		v, ok := connectVersion(body)
		if !ok {
			c.err = ErrMalformedConnect
			return false, nil
		}
		c.connected = true
		c.v5 = v == 5
		if c.v5 && !connectPropsValid(body) {
			// mochi keeps the last of duplicated properties and reads
			// Receive Maximum 0 as absent: answer as MQTT 5 requires,
			// before mochi sees the packet.
			_, _ = c.Write(connackProtocolError)
			c.err = ErrConnectProtocol
			return false, nil
		}
	case typeSubscribe:
		if !validSubscribe(body, c.v5) {
			c.err = ErrMalformedSubscribe
			return false, nil
		}
		if c.v5 && len(body) > 2 {
			if _, ok := checkProps(body[2:], propsSubscribe); !ok {
				c.err = ErrSubscribeProtocol
				return false, nil
			}
		}
	}
	c.out = c.hold
	return true, after
}

// connectVersion returns the protocol level of a CONNECT body.
func connectVersion(body []byte) (byte, bool) {
	if len(body) < 2 {
		return 0, false
	}
	off := 2 + int(binary.BigEndian.Uint16(body))
	if off >= len(body) {
		return 0, false
	}
	return body[off], true
}

// validSubscribe checks the layout mochi's SubscribeDecode relies on: packet
// id, (v5) properties, then filters each followed by its options byte.
func validSubscribe(body []byte, v5 bool) bool {
	if len(body) < 2 {
		return false
	}
	off := 2
	if v5 {
		n, bu, ok := varint(body[off:])
		if !ok {
			return false
		}
		off += bu + n
		if off > len(body) {
			return false
		}
	}
	for off < len(body) {
		if len(body)-off < 2 {
			return false
		}
		off += 2 + int(binary.BigEndian.Uint16(body[off:]))
		if off >= len(body) {
			return false // filter not followed by its options byte
		}
		off++
	}
	return true
}

// varint decodes an MQTT variable byte integer of at most 4 bytes.
func varint(b []byte) (n, size int, ok bool) {
	for i := 0; i < 4 && i < len(b); i++ {
		n |= int(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return n, i + 1, true
		}
	}
	return 0, 0, false
}

// connackProtocolError is an MQTT 5 CONNACK with reason 0x82 (protocol
// error) and no properties.
var connackProtocolError = []byte{0x20, 0x03, 0x00, 0x82, 0x00}

// MQTT 5 property identifiers with their value types; a missing identifier
// is unknown. Only the User Property may appear more than once in a
// CONNECT or in its Will properties [MQTT-2.2.2].
const (
	propByte = iota + 1
	propUint16
	propUint32
	propVarint
	propString
	propBinary
	propPair
)

var propTypes = [256]byte{
	0x01: propByte, 0x02: propUint32, 0x03: propString, 0x08: propString, 0x09: propBinary,
	0x0B: propVarint, 0x11: propUint32, 0x12: propString, 0x13: propUint16, 0x15: propString,
	0x16: propBinary, 0x17: propByte, 0x18: propUint32, 0x19: propByte, 0x1A: propString,
	0x1C: propString, 0x1F: propString, 0x21: propUint16, 0x22: propUint16, 0x23: propUint16,
	0x24: propByte, 0x25: propByte, 0x26: propPair, 0x27: propUint32, 0x28: propByte,
	0x29: propByte, 0x2A: propByte,
}

const propUser = 0x26

// connectPropsValid reports whether an MQTT 5 CONNECT body's properties
// and Will properties respect the protocol: no property but the User
// Property twice, Receive Maximum and Maximum Packet Size not 0, Request
// Problem/Response Information 0 or 1. A body it cannot parse is left to
// mochi's decoder (true).
func connectPropsValid(body []byte) bool {
	if len(body) < 2 {
		return true
	}
	off := 2 + int(binary.BigEndian.Uint16(body)) // protocol name
	if off+4 > len(body) {
		return true
	}
	flags := body[off+1]
	off += 4 // version, flags, keepalive
	n, ok := checkProps(body[off:], propsConnect)
	if !ok {
		return false
	}
	if n < 0 || flags&0x04 == 0 {
		return true
	}
	off += n
	if off+2 > len(body) {
		return true
	}
	off += 2 + int(binary.BigEndian.Uint16(body[off:])) // client id
	if off > len(body) {
		return true
	}
	_, ok = checkProps(body[off:], propsWill)
	return ok
}

// Property blocks checkProps knows.
const (
	propsConnect = iota
	propsWill
	propsSubscribe
)

// checkProps checks one property block (length and properties) of the
// given kind and returns its size; n < 0 means it could not be parsed.
func checkProps(b []byte, kind int) (n int, ok bool) {
	plen, size, vok := varint(b)
	if !vok || size+plen > len(b) {
		return -1, true
	}
	p := b[size : size+plen]
	var seen [256]bool
	for i := 0; i < len(p); {
		id := p[i]
		i++
		t := propTypes[id]
		if t == 0 {
			return -1, true
		}
		if seen[id] && id != propUser {
			return 0, false
		}
		seen[id] = true
		var l int
		switch t {
		case propByte:
			l = 1
		case propUint16:
			l = 2
		case propUint32:
			l = 4
		case propVarint:
			_, vs, vok := varint(p[i:])
			if !vok {
				return -1, true
			}
			l = vs
		case propString, propBinary:
			if i+2 > len(p) {
				return -1, true
			}
			l = 2 + int(binary.BigEndian.Uint16(p[i:]))
		case propPair:
			if i+2 > len(p) {
				return -1, true
			}
			k := 2 + int(binary.BigEndian.Uint16(p[i:]))
			if i+k+2 > len(p) {
				return -1, true
			}
			l = k + 2 + int(binary.BigEndian.Uint16(p[i+k:]))
		}
		if i+l > len(p) {
			return -1, true
		}
		v := p[i : i+l]
		if kind == propsSubscribe && id == 0x0B {
			if sid, _, _ := varint(v); sid == 0 {
				return 0, false // [MQTT-3.8.2.1.2]
			}
		}
		if kind == propsConnect {
			switch id {
			case 0x21: // Receive Maximum
				if binary.BigEndian.Uint16(v) == 0 {
					return 0, false
				}
			case 0x27: // Maximum Packet Size
				if binary.BigEndian.Uint32(v) == 0 {
					return 0, false
				}
			case 0x17, 0x19: // Request Problem / Response Information
				if v[0] > 1 {
					return 0, false
				}
			}
		}
		i += l
	}
	return size + plen, true
}
