package listen

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// rawConnect5 is the body of an MQTT 5 CONNECT with the given property
// block contents and, when will is non-nil, a Will with those properties.
func rawConnect5(props []byte, will []byte) []byte {
	flags := byte(0x02)
	if will != nil {
		flags |= 0x04
	}
	b := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, flags, 0, 30}
	b = append(b, byte(len(props)))
	b = append(b, props...)
	b = append(b, 0, 2, 'i', 'd')
	if will != nil {
		b = append(b, byte(len(will)))
		b = append(b, will...)
		b = append(b, 0, 1, 'w', 0, 1, 'x')
	}
	return b
}

func packet(typ byte, body []byte) []byte {
	return append([]byte{typ, byte(len(body))}, body...)
}

func TestConnectPropsValid(t *testing.T) {
	u16 := func(id byte, v uint16) []byte { return binary.BigEndian.AppendUint16([]byte{id}, v) }
	u32 := func(id byte, v uint32) []byte { return binary.BigEndian.AppendUint32([]byte{id}, v) }
	user := []byte{0x26, 0, 1, 'k', 0, 1, 'v'}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name  string
		props []byte
		will  []byte
		want  bool
	}{
		{"no properties", nil, nil, true},
		{"typical", cat(u32(0x11, 3600), u16(0x21, 20), u32(0x27, 1<<20)), nil, true},
		{"user property twice", cat(user, user), nil, true},
		{"session expiry twice", cat(u32(0x11, 1), u32(0x11, 2)), nil, false},
		{"receive maximum twice", cat(u16(0x21, 5), u16(0x21, 5)), nil, false},
		{"receive maximum 0", u16(0x21, 0), nil, false},
		{"maximum packet size 0", u32(0x27, 0), nil, false},
		{"request problem information 2", []byte{0x17, 2}, nil, false},
		{"request response information 1", []byte{0x19, 1}, nil, true},
		{"authentication method twice", cat([]byte{0x15, 0, 1, 'a'}, []byte{0x15, 0, 1, 'b'}), nil, false},
		{"will delay twice", nil, cat(u32(0x18, 1), u32(0x18, 1)), false},
		{"will user properties", nil, cat(user, user, u32(0x18, 1)), true},
		{"will content type twice", nil, cat([]byte{0x03, 0, 1, 'a'}, []byte{0x03, 0, 0}), false},
		// Left to mochi's decoder: unknown identifiers, truncation.
		{"unknown identifier", []byte{0x7f, 1, 2}, nil, true},
		{"truncated string", []byte{0x15, 0, 9, 'a'}, nil, true},
	}
	for _, tt := range tests {
		if got := connectPropsValid(rawConnect5(tt.props, tt.will)); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestConnectProtocolErrorAnswered: the reader answers an MQTT 5 CONNECT
// with duplicate properties with CONNACK 0x82 and ends the stream before
// any byte of it is handed on.
func TestConnectProtocolErrorAnswered(t *testing.T) {
	dup := []byte{0x21, 0, 5, 0x21, 0, 5}
	a, b := net.Pipe()
	defer a.Close()
	fc := newFrameConn(b, 0, time.Second)
	go func() { _, _ = a.Write(packet(0x10, rawConnect5(dup, nil))) }()
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 16)
		n, _ := io.ReadAtLeast(a, buf, len(connackProtocolError))
		got <- buf[:n]
	}()
	n, err := fc.Read(make([]byte, 256))
	if n != 0 || err != ErrConnectProtocol {
		t.Fatalf("Read = %d, %v; want 0, ErrConnectProtocol", n, err)
	}
	select {
	case ack := <-got:
		if !bytes.Equal(ack, []byte{0x20, 0x03, 0x00, 0x82, 0x00}) {
			t.Fatalf("CONNACK % x", ack)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no CONNACK")
	}
}

func FuzzConnectPropsValid(f *testing.F) {
	f.Add(rawConnect5([]byte{0x21, 0, 5, 0x21, 0, 5}, nil))
	f.Add(rawConnect5([]byte{0x26, 0, 1, 'k', 0, 1, 'v'}, []byte{0x18, 0, 0, 0, 1}))
	f.Add([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x04, 0, 0, 0x80})
	f.Fuzz(func(t *testing.T, body []byte) {
		_ = connectPropsValid(body)
	})
}

func TestSubscribePropsChecked(t *testing.T) {
	body := func(props ...byte) []byte {
		b := []byte{0, 1, byte(len(props))}
		b = append(b, props...)
		return append(b, 0, 1, 'a', 1)
	}
	for _, tt := range []struct {
		name string
		body []byte
		want bool
	}{
		{"no properties", body(), true},
		{"subscription identifier", body(0x0B, 5), true},
		{"user properties", body(0x26, 0, 1, 'k', 0, 0, 0x26, 0, 1, 'k', 0, 0), true},
		{"subscription identifier twice", body(0x0B, 5, 0x0B, 6), false},
		{"subscription identifier 0", body(0x0B, 0), false},
	} {
		if _, ok := checkProps(tt.body[2:], propsSubscribe); ok != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, ok, tt.want)
		}
	}
}
