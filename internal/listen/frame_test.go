package listen

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// chunkConn serves a byte stream in fixed-size pieces.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.chunk, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func encode(t testing.TB, pk packets.Packet, version byte) []byte {
	t.Helper()
	b, err := mqtttest.Encode(pk, version)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFrameConnStreams(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 5000)
	pub := func(v byte, payload []byte) []byte {
		return encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: payload}, v)
	}
	sub := func(v byte) []byte {
		return encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 7,
			Filters: packets.Subscriptions{{Filter: "a/#", Qos: 1}, {Filter: "c", Qos: 0}}}, v)
	}
	ping := encode(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}, 4)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	tests := []struct {
		name    string
		stream  []byte
		max     int
		wantErr error
		wantN   int // bytes passed before the error; -1 = whole stream
	}{
		{"v4 mixed", cat(connectBytes(t, "c", 4), pub(4, []byte("hi")), sub(4), ping, pub(4, big), sub(4)), 0, nil, -1},
		{"v5 mixed", cat(connectBytes(t, "c", 5), sub(5), pub(5, big), ping, sub(5)), 0, nil, -1},
		{"v3", cat(connectBytes(t, "c", 3), sub(3), ping), 0, nil, -1},
		{"first not connect", cat(ping, connectBytes(t, "c", 4)), 0, ErrFirstNotConnect, 0},
		{"501", cat(connectBytes(t, "c", 5), ping, mochi501, ping), 0, ErrMalformedSubscribe, len(connectBytes(t, "c", 5)) + len(ping)},
		{"v4 truncated subscribe", cat(connectBytes(t, "c", 4), []byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'}), 0, ErrMalformedSubscribe, len(connectBytes(t, "c", 4))},
		{"subscribe without packet id", cat(connectBytes(t, "c", 4), []byte{0x82, 0x01, 0x00}), 0, ErrMalformedSubscribe, len(connectBytes(t, "c", 4))},
		{"v5 subscribe properties overrun", cat(connectBytes(t, "c", 5), []byte{0x82, 0x04, 0x00, 0x01, 0x09, 0x00}), 0, ErrMalformedSubscribe, len(connectBytes(t, "c", 5))},
		{"too large", cat(connectBytes(t, "c", 4), pub(4, big)), 1000, ErrPacketTooLarge, len(connectBytes(t, "c", 4))},
		{"at limit", cat(connectBytes(t, "c", 4), pub(4, big[:100])), len(pub(4, big[:100])), nil, -1},
		{"length overflow", cat(connectBytes(t, "c", 4), []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}), 0, ErrMalformedLength, len(connectBytes(t, "c", 4))},
		{"connect without version", []byte{0x10, 0x02, 0x00, 0x04}, 0, ErrMalformedConnect, 0},
	}
	for _, tc := range tests {
		for _, chunk := range []int{1, 2, 3, 7, 64, 100000} {
			for _, readSize := range []int{1, 5, 2048} {
				fc := newFrameConn(&chunkConn{data: tc.stream, chunk: chunk}, tc.max, 0)
				var got []byte
				buf := make([]byte, readSize)
				var err error
				for {
					var n int
					n, err = fc.Read(buf)
					got = append(got, buf[:n]...)
					if err != nil {
						break
					}
				}
				if tc.wantErr == nil {
					if !errors.Is(err, io.EOF) || !bytes.Equal(got, tc.stream) {
						t.Errorf("%s chunk=%d read=%d: err %v, passed %d/%d bytes", tc.name, chunk, readSize, err, len(got), len(tc.stream))
					}
					continue
				}
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("%s chunk=%d read=%d: err %v, want %v", tc.name, chunk, readSize, err, tc.wantErr)
				}
				// Not one byte of a refused packet reaches mochi.
				if len(got) != tc.wantN {
					t.Errorf("%s chunk=%d read=%d: passed %d bytes, want %d", tc.name, chunk, readSize, len(got), tc.wantN)
				}
			}
		}
	}
}

func TestValidSubscribe(t *testing.T) {
	tests := []struct {
		name string
		body []byte
		v5   bool
		want bool
	}{
		{"v4 one filter", []byte{0, 1, 0, 1, 'a', 0}, false, true},
		{"v4 missing qos", []byte{0, 1, 0, 1, 'a'}, false, false},
		{"v4 short length", []byte{0, 1, 0}, false, false},
		{"v4 filter overrun", []byte{0, 1, 0, 9, 'a', 0}, false, false},
		{"v4 no filters", []byte{0, 1}, false, true},
		{"v5 ok", []byte{0, 1, 0, 0, 1, 'a', 0}, true, true},
		{"v5 props", []byte{0, 1, 2, 0x0b, 5, 0, 1, 'a', 0}, true, true},
		{"v5 #501", []byte{0, 1, 0, 0, 1, 'a'}, true, false},
		{"v5 second filter truncated", []byte{0, 1, 0, 0, 1, 'a', 0, 0, 1, 'b'}, true, false},
		{"v5 bad varint", []byte{0, 1, 0x80, 0x80, 0x80, 0x80}, true, false},
		{"v5 empty", nil, true, false},
	}
	for _, tc := range tests {
		if got := validSubscribe(tc.body, tc.v5); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzFrameConnServer feeds arbitrary bytes after a valid CONNECT through the
// framing reader to a whole mochi server. Nothing recovers panics here: the
// server must never panic and must keep serving new clients.
func FuzzFrameConnServer(f *testing.F) {
	f.Add(byte(5), mochi501)
	f.Add(byte(4), []byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'})
	f.Add(byte(5), []byte{0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x00, 0xc0, 0x00})
	f.Add(byte(5), []byte{0x30, 0x07, 0x00, 0x01, 'a', 0x00, 'h', 'i', '!'})
	f.Add(byte(5), []byte{0xa2, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01})
	f.Add(byte(4), []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f})
	f.Add(byte(3), []byte{0xe0, 0x00})
	f.Add(byte(5), []byte{0xf0, 0x02, 0x00, 0x00})

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 64
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), Capabilities: caps})
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		f.Fatal(err)
	}
	const maxPacket = 4096
	var connect [3][]byte
	for v := byte(3); v <= 5; v++ {
		pk := connectPacket("fuzz", v)
		pk.Connect.Keepalive = 0
		connect[v-3] = encode(f, pk, v)
	}

	session := func(t *testing.T, version byte, input []byte, wantConnack bool) {
		cliSide, srvSide := net.Pipe()
		// A watchdog instead of pipe deadlines: net.Pipe keeps a deadline's
		// timer alive after Close, and at fuzzing speed they pile up. For the
		// same reason the CONNECT has keepalive 0 (no deadline from mochi).
		watchdog := time.AfterFunc(ioDeadline, func() { _ = cliSide.Close(); _ = srvSide.Close() })
		defer watchdog.Stop()
		done := make(chan error, 1)
		go func() { done <- srv.EstablishConnection("fuzz", newFrameConn(srvSide, maxPacket, 0)) }()

		var wg sync.WaitGroup
		acked := make(chan bool, 1)
		wg.Go(func() { // drain everything the server writes
			pk, err := mqtttest.ReadPacket(bufio.NewReader(cliSide), version)
			acked <- err == nil && pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0
			_, _ = io.Copy(io.Discard, cliSide)
		})
		_, _ = cliSide.Write(append(connect[version-3], input...))
		if wantConnack && !<-acked {
			t.Error("server did not accept a valid CONNECT")
		}
		_ = cliSide.Close()
		<-done // a session error is fine; a panic fails the fuzz run
		wg.Wait()
	}

	f.Fuzz(func(t *testing.T, version byte, input []byte) {
		v := []byte{3, 4, 5}[int(version)%3]
		session(t, v, input, false)
		session(t, v, nil, true) // still serving
	})
}
