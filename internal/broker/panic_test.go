package broker_test

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// panicOnBoom panics in the session goroutine of a client that subscribes
// to "boom": a stand-in for any defect that takes a session down.
type panicOnBoom struct{ mqtt.HookBase }

func (*panicOnBoom) ID() string           { return "test-panic" }
func (*panicOnBoom) Provides(b byte) bool { return b == mqtt.OnSubscribe }
func (*panicOnBoom) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for _, f := range pk.Filters {
		if f.Filter == "boom" {
			panic("session defect")
		}
	}
	return pk
}

// A persistent session whose goroutine panics keeps its subscriptions and
// its in-flight and queued messages, as any abnormal disconnect does; a
// clean session is removed.
func TestPanickedSessionKeepsPersistentState(t *testing.T) {
	tb := startBroker(t, setup{acl: "pattern readwrite %u/#\n"})
	if err := tb.b.Server().AddHook(new(panicOnBoom), nil); err != nil {
		t.Fatal(err)
	}
	for _, v := range []byte{4, 5} {
		o := as(v, "alice", "keeper")
		o.persist = true
		mo := o.options()
		mo.AutoAck = false // the first delivery stays in flight
		raw, ack, err := mqtttest.Dial(tb.addr, mo)
		if err != nil || ack.ReasonCode != 0 {
			t.Fatalf("v%d: connect: %v 0x%02x", v, err, ack.ReasonCode)
		}
		t.Cleanup(func() { _ = raw.Close() })
		keeper := &client{Client: raw, t: t}
		keeper.mustSubscribe("alice/q/#")

		pub := connect(t, tb.addr, as(v, "alice", "pub"))
		pub.publish("alice/q/inflight", "1", 1, false)
		if !keeper.waitTopic("alice/q/inflight") {
			t.Fatalf("v%d: first message not delivered", v)
		}
		keeper.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: keeper.NextID(),
			Filters: packets.Subscriptions{{Filter: "boom", Qos: 1}}})
		if !keeper.waitClosed() {
			t.Fatalf("v%d: panicked session not closed", v)
		}
		pub.publish("alice/q/queued", "2", 1, false) // while the session is offline

		again, ack := dial(t, tb.addr, o)
		if !ack.SessionPresent {
			t.Errorf("v%d: session lost with the panic (session present 0)", v)
		}
		for _, topic := range []string{"alice/q/inflight", "alice/q/queued"} {
			if !again.waitTopic(topic) {
				t.Errorf("v%d: %s not delivered after the panic", v, topic)
			}
		}
		again.disconnect()
		pub.disconnect()
	}

	// A clean session is removed, and others are served meanwhile.
	c := connect(t, tb.addr, as(5, "alice", "clean"))
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: c.NextID(),
		Filters: packets.Subscriptions{{Filter: "boom", Qos: 1}}})
	if !c.waitClosed() {
		t.Fatal("clean panicked session not closed")
	}
	if _, ack := dial(t, tb.addr, as(5, "alice", "clean")); ack.SessionPresent {
		t.Error("clean session kept after its panic")
	}
}
