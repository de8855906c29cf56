package broker_test

import (
	"slices"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// The packets of the MQTT features clients lean on, exactly, under 3.1.1
// and 5 where both have them.

const protoACL = "pattern readwrite %u/#\n"

// raw dials with mqtttest options edited by tweak (CONNECT properties the
// opts helpers do not cover) and requires CONNACK 0.
func raw(t *testing.T, addr string, o opts, tweak func(*mqtttest.Options)) (*client, packets.Packet) {
	t.Helper()
	mo := o.options()
	if tweak != nil {
		tweak(&mo)
	}
	c, ack, err := mqtttest.Dial(addr, mo)
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("%s: connect: %v 0x%02x", o.id, err, ack.ReasonCode)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{Client: c, t: t}, ack
}

// messages is every PUBLISH c received so far, in order.
func messages(c *client) []packets.Packet {
	var out []packets.Packet
	c.WaitUntil(0, func(s mqtttest.State) bool {
		out = slices.Clone(s.Messages)
		return true
	})
	return out
}

// subscribeWith sends one SUBSCRIBE and returns its SUBACK codes.
func (c *client) subscribeWith(pk packets.Packet) []byte {
	c.t.Helper()
	pk.FixedHeader.Type = packets.Subscribe
	pk.PacketID = c.NextID()
	c.write(pk)
	ack, ok := c.WaitPacket(packets.Suback, pk.PacketID, waitLong)
	if !ok {
		c.t.Fatal("no SUBACK")
	}
	return ack.ReasonCodes
}

// Overlapping subscriptions: one delivery per message, at the highest
// granted QoS, carrying every matching subscription identifier (MQTT 5
// §3.3.4); 3.1.1 clients get one copy too.
func TestOverlappingSubscriptions(t *testing.T) {
	tb := startBroker(t, setup{acl: protoACL})
	for _, v := range []byte{4, 5} {
		sub := connect(t, tb.addr, as(v, "alice", "overlap"))
		if v == 5 {
			for i, f := range []packets.Subscription{{Filter: "alice/#", Qos: 1, Identifier: 7}, {Filter: "alice/+/t", Qos: 2, Identifier: 9}} {
				if got := sub.subscribeWith(packets.Packet{Filters: packets.Subscriptions{f}, Properties: packets.Properties{SubscriptionIdentifier: []int{f.Identifier}}}); got[0] != f.Qos {
					t.Fatalf("subscribe %d: %v", i, got)
				}
			}
		} else {
			if got := sub.Subscribe(t, 1, "alice/#"); got[0] != 1 {
				t.Fatalf("subscribe: %v", got)
			}
			if got := sub.Subscribe(t, 2, "alice/+/t"); got[0] != 2 {
				t.Fatalf("subscribe: %v", got)
			}
		}
		pub := connect(t, tb.addr, as(v, "alice", "overlap-pub"))
		pub.publish("alice/x/t", "both", 2, false)
		pub.publish("alice/marker", "m", 1, false)
		if !sub.waitTopic("alice/marker") {
			t.Fatalf("v%d: marker not delivered", v)
		}
		var copies []packets.Packet
		for _, m := range messages(sub) {
			if m.TopicName == "alice/x/t" {
				copies = append(copies, m)
			}
		}
		if len(copies) != 1 {
			t.Fatalf("v%d: %d copies of a message matching two subscriptions, want 1", v, len(copies))
		}
		if q := copies[0].FixedHeader.Qos; q != 2 {
			t.Errorf("v%d: delivered at QoS %d, want 2 (the highest granted)", v, q)
		}
		if v == 5 && !slices.Equal(copies[0].Properties.SubscriptionIdentifier, []int{7, 9}) {
			t.Errorf("subscription identifiers %v, want [7 9]", copies[0].Properties.SubscriptionIdentifier)
		}
		sub.disconnect()
		pub.disconnect()
	}
}

// Topic aliases: Moat offers none to clients (an inbound alias is a
// protocol error, MQTT 5 DISCONNECT 0x94) and uses the aliases a client
// offers for its deliveries: the first carries topic and alias, the next
// the alias alone.
func TestTopicAliases(t *testing.T) {
	tb := startBroker(t, setup{acl: protoACL})
	_, ack := raw(t, tb.addr, as(5, "alice", "alias-in"), nil)
	if ack.Properties.TopicAliasMaximum != 0 {
		t.Errorf("CONNACK Topic Alias Maximum %d, want 0 (none offered)", ack.Properties.TopicAliasMaximum)
	}

	sub, _ := raw(t, tb.addr, as(5, "alice", "alias-out"), func(o *mqtttest.Options) {
		o.Tweak = func(pk *packets.Packet) { pk.Properties.TopicAliasMaximum = 4 }
	})
	sub.mustSubscribe("alice/#")
	pub := connect(t, tb.addr, as(5, "alice", "alias-pub"))
	for range 2 {
		pub.publish("alice/aliased/topic", "x", 1, false)
	}
	if !sub.WaitUntil(waitLong, func(s mqtttest.State) bool { return len(s.Messages) >= 2 }) {
		t.Fatal("deliveries missing")
	}
	msgs := messages(sub)
	first, second := msgs[0], msgs[1]
	if first.TopicName != "alice/aliased/topic" || first.Properties.TopicAlias == 0 {
		t.Errorf("first delivery: topic %q alias %d, want the topic with a new alias", first.TopicName, first.Properties.TopicAlias)
	}
	if second.TopicName != "" || second.Properties.TopicAlias != first.Properties.TopicAlias {
		t.Errorf("second delivery: topic %q alias %d, want the alias %d alone", second.TopicName, second.Properties.TopicAlias, first.Properties.TopicAlias)
	}

	in := connect(t, tb.addr, as(5, "alice", "alias-send"))
	in.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "alice/a", Payload: []byte("x"),
		Properties: packets.Properties{TopicAlias: 1, TopicAliasFlag: true}})
	if !in.waitClosed() {
		t.Fatal("an inbound topic alias was accepted although none is offered")
	}
	if d, ok := in.WaitPacket(packets.Disconnect, 0, 0); !ok || d.ReasonCode != 0x94 {
		t.Errorf("DISCONNECT %v code 0x%02x, want 0x94 (topic alias invalid)", ok, d.ReasonCode)
	}
}

// Request/response: Response Topic and Correlation Data reach the
// subscriber as sent.
func TestRequestResponseProperties(t *testing.T) {
	tb := startBroker(t, setup{acl: protoACL})
	sub := connect(t, tb.addr, as(5, "alice", "rr-sub"))
	sub.mustSubscribe("alice/req")
	pub := connect(t, tb.addr, as(5, "alice", "rr-pub"))
	// mochi's encoder, which the raw client uses, writes these two only
	// when told to.
	pub.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "alice/req", Payload: []byte("q"),
		Mods: packets.Mods{AllowResponseInfo: true},
		Properties: packets.Properties{ResponseTopic: "alice/resp/1", CorrelationData: []byte{0, 1, 0xff}, ContentType: "application/json",
			PayloadFormat: 1, PayloadFormatFlag: true}})
	if !sub.waitTopic("alice/req") {
		t.Fatal("request not delivered")
	}
	m, _ := sub.message("alice/req")
	p := m.Properties
	if p.ResponseTopic != "alice/resp/1" || !slices.Equal(p.CorrelationData, []byte{0, 1, 0xff}) || p.ContentType != "application/json" ||
		!p.PayloadFormatFlag || p.PayloadFormat != 1 {
		t.Errorf("delivered properties %+v", p)
	}
}

// Message expiry: a message queued for an offline session is dropped once
// its expiry passes; one still valid arrives with the time it has left,
// counted down (MQTT 5 §3.3.2.3.3). Retained messages expire the same way.
func TestMessageExpiryQueuedAndRetained(t *testing.T) {
	tb := startBroker(t, setup{acl: protoACL})
	o := as(5, "alice", "exp-sub")
	o.persist = true
	sub := connect(t, tb.addr, o)
	sub.mustSubscribe("alice/q/#")
	sub.disconnect()

	pub := connect(t, tb.addr, as(5, "alice", "exp-pub"))
	for _, m := range []struct {
		topic  string
		expiry uint32
		retain bool
	}{{"alice/q/short", 1, false}, {"alice/q/long", 60, false}, {"alice/r/short", 1, true}, {"alice/r/long", 60, true}} {
		id := pub.NextID()
		pub.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: m.retain}, PacketID: id,
			TopicName: m.topic, Payload: []byte("x"), Properties: packets.Properties{MessageExpiryInterval: m.expiry}})
		if a, ok := pub.WaitPacket(packets.Puback, id, waitLong); !ok || a.ReasonCode != 0 {
			t.Fatalf("%s: PUBACK %v 0x%02x", m.topic, ok, a.ReasonCode)
		}
	}
	time.Sleep(2100 * time.Millisecond) // the short ones are past their expiry

	sub = connect(t, tb.addr, o)
	sub.mustSubscribe("alice/r/#")
	sub.publish("alice/q/marker", "m", 1, false)
	if !sub.waitTopic("alice/q/marker") {
		t.Fatal("marker not delivered")
	}
	got := sorted(without(sub.topics(), "alice/q/marker"))
	if !slices.Equal(got, []string{"alice/q/long", "alice/r/long"}) {
		t.Errorf("after expiry: %v, want only the long-lived ones", got)
	}
	for _, topic := range []string{"alice/q/long", "alice/r/long"} {
		if m, ok := sub.message(topic); ok && (m.Properties.MessageExpiryInterval == 0 || m.Properties.MessageExpiryInterval > 59) {
			t.Errorf("%s: Message Expiry Interval %d, want the time left (1..59)", topic, m.Properties.MessageExpiryInterval)
		}
	}
}

// Will delay: a Will is published Will Delay seconds after an abnormal
// disconnect, not when the client resumes its session first, and no later
// than the session's end when that comes sooner (MQTT 5 §3.1.3.2.2).
func TestWillDelayWithSessionExpiry(t *testing.T) {
	tb := startBroker(t, setup{acl: protoACL})
	watch := connect(t, tb.addr, as(5, "alice", "will-watch"))
	watch.mustSubscribe("alice/will/#")
	withWill := func(id, topic string) opts {
		o := as(5, "alice", id)
		o.will = &packets.Packet{TopicName: topic, Payload: []byte("gone")}
		return o
	}
	dialWill := func(o opts, delay, expiry uint32) *client {
		c, _ := raw(t, tb.addr, o, func(mo *mqtttest.Options) {
			mo.Tweak = func(pk *packets.Packet) {
				pk.Connect.WillProperties.WillDelayInterval = delay
				pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = expiry, true
			}
		})
		return c
	}

	// Resumed within the delay: no Will.
	o := withWill("will-resume", "alice/will/resume")
	dialWill(o, 3, 60).drop()
	time.Sleep(500 * time.Millisecond)
	dialWill(o, 3, 60)
	// Session ends (expiry 1 s) before the delay (30 s): the Will comes
	// with the session's end.
	dialWill(withWill("will-expire", "alice/will/expire"), 30, 1).drop()
	// Delay 1 s, long session: the Will comes after the delay.
	dialWill(withWill("will-delay", "alice/will/delay"), 1, 60).drop()

	if !watch.WaitUntil(10*time.Second, func(s mqtttest.State) bool { return len(s.Messages) >= 2 }) {
		t.Fatalf("Wills published: %v, want alice/will/delay and alice/will/expire", watch.topics())
	}
	watch.quietFor(3500 * time.Millisecond) // past the resumed client's delay
	if got := sorted(watch.topics()); !slices.Equal(got, []string{"alice/will/delay", "alice/will/expire"}) {
		t.Errorf("Wills published: %v, want alice/will/delay and alice/will/expire only", got)
	}
}
