package main

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"time"
)

// A minimal MQTT 3.1.1 client on raw packets: the load generator must cost
// less than the brokers it measures, so nothing here allocates per message.

const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typeDisconnect = 14
)

type client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	buf  []byte // reused packet body
}

// appendVarint appends MQTT's remaining-length encoding of n.
func appendVarint(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func encodeConnect(id, user, pass string, keepalive uint16) []byte {
	var body []byte
	body = appendString(body, "MQTT")
	flags := byte(0x02) // clean session
	if user != "" {
		flags |= 0x80 | 0x40
	}
	body = append(body, 4, flags)
	body = binary.BigEndian.AppendUint16(body, keepalive)
	body = appendString(body, id)
	if user != "" {
		body = appendString(body, user)
		body = appendString(body, pass)
	}
	return packet(typeConnect<<4, body)
}

// encodePublish builds a PUBLISH; for QoS 1 the packet id sits at
// publishIDOffset(topic) so callers can patch it in place.
func encodePublish(topic string, qos byte, id uint16, payload []byte) []byte {
	var body []byte
	body = appendString(body, topic)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	body = append(body, payload...)
	return packet(typePublish<<4|qos<<1, body)
}

func encodeSubscribe(id uint16, filter string, qos byte) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	body = appendString(body, filter)
	body = append(body, qos)
	return packet(typeSubscribe<<4|0x02, body)
}

func encodePuback(id uint16) []byte {
	return []byte{typePuback << 4, 2, byte(id >> 8), byte(id)}
}

func packet(first byte, body []byte) []byte {
	b := appendVarint([]byte{first}, len(body))
	return append(b, body...)
}

// localAddr spreads clients over 127.0.0.0/8 by their id, as devices have
// addresses of their own: Moat caps concurrent password checks per
// address, and a whole fleet behind one address would measure that cap.
func localAddr(id string) *net.TCPAddr {
	h := fnv.New32a()
	h.Write([]byte(id))
	v := h.Sum32()
	return &net.TCPAddr{IP: net.IPv4(127, byte(v>>16)|1, byte(v>>8), byte(v)|1)}
}

// dial connects, sends CONNECT and waits for a successful CONNACK, all
// within timeout.
func dial(addr string, tc *tls.Config, id, user, pass string, keepalive uint16, timeout time.Duration) (*client, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: localAddr(id)}
	var conn net.Conn
	var err error
	if tc != nil {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: tc}).Dial("tcp", addr)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn, r: bufio.NewReaderSize(conn, 32<<10), w: bufio.NewWriterSize(conn, 32<<10)}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.send(encodeConnect(id, user, pass, keepalive)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect %s: %w", id, err)
	}
	t, body, err := c.read()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connack %s: %w", id, err)
	}
	if t>>4 != typeConnack || len(body) != 2 || body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("connack %s: type %d body %x", id, t, body)
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *client) send(b []byte) error {
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.w.Flush()
}

// subscribe sends one SUBSCRIBE and checks the SUBACK grants it.
func (c *client) subscribe(filter string, qos byte) error {
	if err := c.conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	defer c.conn.SetDeadline(time.Time{})
	if err := c.send(encodeSubscribe(1, filter, qos)); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	t, body, err := c.read()
	if err != nil {
		return fmt.Errorf("suback %s: %w", filter, err)
	}
	if t>>4 != typeSuback || len(body) != 3 || body[2] == 0x80 {
		return fmt.Errorf("suback %s: type %d body %x", filter, t, body)
	}
	return nil
}

// header reads a fixed header: the packet type byte and the body length.
func (c *client) header() (byte, int, error) {
	first, err := c.r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	n, mult := 0, 1
	for i := 0; i < 4; i++ {
		d, err := c.r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		n += int(d&0x7f) * mult
		if d&0x80 == 0 {
			return first, n, nil
		}
		mult *= 128
	}
	return 0, 0, errors.New("malformed remaining length")
}

// read returns the next packet's first byte and body (valid until the next read).
func (c *client) read() (byte, []byte, error) {
	first, n, err := c.header()
	if err != nil {
		return 0, nil, err
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	body := c.buf[:n]
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return first, body, nil
}

// skip reads and discards the next packet, returning its type.
func (c *client) skip() (byte, error) {
	first, n, err := c.header()
	if err != nil {
		return 0, err
	}
	_, err = c.r.Discard(n)
	return first >> 4, err
}

// publishPayload splits a PUBLISH body into packet id and payload.
func publishPayload(first byte, body []byte) (uint16, []byte, bool) {
	if len(body) < 2 {
		return 0, nil, false
	}
	tl := int(binary.BigEndian.Uint16(body))
	off := 2 + tl
	var id uint16
	if (first>>1)&3 > 0 {
		if len(body) < off+2 {
			return 0, nil, false
		}
		id = binary.BigEndian.Uint16(body[off:])
		off += 2
	}
	if len(body) < off {
		return 0, nil, false
	}
	return id, body[off:], true
}

// close sends DISCONNECT and closes the socket.
func (c *client) close() {
	_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.send([]byte{typeDisconnect << 4, 0})
	_ = c.conn.Close()
}
