package mochi

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// The reach-ins fit the pinned mochi; another layout is refused.
func TestVerifyOnPinnedMochi(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := Verify(srv); err != nil {
		t.Fatalf("mochi's layout changed: %v", err)
	}
	if err := StopRetainedSweep(srv); err != nil {
		t.Fatal(err)
	}
	if _, err := deliveryCounter(&mqtt.Client{}); err != nil {
		t.Fatal(err)
	}
}

// A client numbering its packets from 1 subscribes while ten QoS 1
// deliveries to it are unacknowledged: every SUBSCRIBE is granted.
func TestClientPacketIDsDoNotCollideWithDeliveries(t *testing.T) {
	for _, fix := range []bool{false, true} {
		srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), InlineClient: true})
		srv.AddHook(&allowAll{}, nil)
		if fix {
			srv.AddHook(&PacketIDs{}, nil)
		}
		ln := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
		if err := srv.AddListener(ln); err != nil {
			t.Fatal(err)
		}
		if err := srv.Serve(); err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", ln.Address())
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		send := func(pk packets.Packet) {
			var b bytes.Buffer
			switch pk.FixedHeader.Type {
			case packets.Connect:
				pk.ConnectEncode(&b)
			case packets.Subscribe:
				pk.SubscribeEncode(&b)
			}
			conn.Write(b.Bytes())
		}
		next := func() (byte, []byte) {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			h, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			n, mul := 0, 1
			for {
				c, _ := r.ReadByte()
				n += int(c&127) * mul
				mul *= 128
				if c < 128 {
					break
				}
			}
			body := make([]byte, n)
			io.ReadFull(r, body)
			return h >> 4, body
		}
		send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "c"}})
		next() // CONNACK
		send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "t", Qos: 1}}})
		next() // SUBACK
		for i := 0; i < 10; i++ {
			srv.Publish("t", []byte("x"), false, 1)
		}
		got := 0
		for got < 10 {
			if typ, _ := next(); typ == packets.Publish {
				got++ // never acknowledged
			}
		}
		refused := 0
		for id := uint16(2); id <= 11; id++ {
			send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: id,
				Filters: packets.Subscriptions{{Filter: "u", Qos: 0}}})
			for {
				typ, body := next()
				if typ == packets.Suback {
					if body[len(body)-1] >= 0x80 {
						refused++
					}
					break
				}
			}
		}
		conn.Close()
		srv.Close()
		if fix && refused != 0 {
			t.Fatalf("%d of 10 SUBSCRIBEs refused for a packet id in use by a delivery", refused)
		}
		if !fix && refused == 0 {
			t.Fatal("without the hook mochi should have refused some: the test no longer shows the defect")
		}
	}
}
