package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

const wireACL = "pattern readwrite %u/#\n"

// An acknowledgement carries no property the client did not ask for: a
// PUBLISH's user properties are not echoed into its PUBACK or PUBREC.
func TestAckCarriesNoEchoedProperties(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL})
	c := connect(t, tb.addr, as(5, "alice", "echo"))
	for _, qos := range []byte{1, 2} {
		id := c.NextID()
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
			TopicName:   "alice/echo", PacketID: id, Payload: []byte("x"),
			Properties: packets.Properties{
				User:          []packets.UserProperty{{Key: "reflect", Val: "me"}},
				ContentType:   "text/plain",
				ResponseTopic: "alice/reply",
			},
		}
		c.write(pk)
		typ := byte(packets.Puback)
		if qos == 2 {
			typ = packets.Pubrec
		}
		ack, ok := c.WaitPacket(typ, id, waitLong)
		if !ok {
			t.Fatalf("QoS %d: no ack", qos)
		}
		if len(ack.Properties.User) != 0 || ack.Properties.ContentType != "" || ack.Properties.ResponseTopic != "" {
			t.Errorf("QoS %d: ack carries properties %+v", qos, ack.Properties)
		}
		if qos == 2 {
			c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: id})
			if _, ok := c.WaitPacket(packets.Pubcomp, id, waitLong); !ok {
				t.Fatal("no PUBCOMP")
			}
		}
	}
}

// Request Problem Information 0 forbids reason strings and user
// properties on acknowledgements, never on PUBLISH: there they are the
// message's own content.
func TestRequestProblemInfoZeroKeepsPublishUserProperties(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL})
	o := as(5, "alice", "noproblem").options()
	o.Tweak = func(pk *packets.Packet) {
		pk.Properties.RequestProblemInfo = 0
		pk.Properties.RequestProblemInfoFlag = true
	}
	sub, ack, err := mqtttest.Dial(tb.addr, o)
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v 0x%02x", err, ack.ReasonCode)
	}
	t.Cleanup(func() { _ = sub.Close() })
	sub.MustSubscribe(t, 1, "alice/#")

	pub := connect(t, tb.addr, as(5, "alice", "pub"))
	pub.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "alice/props", Payload: []byte("x"),
		Properties: packets.Properties{User: []packets.UserProperty{{Key: "unit", Val: "C"}}},
	})
	if !sub.WaitTopic("alice/props") {
		t.Fatal("message not delivered")
	}
	m, _ := sub.Message("alice/props")
	if len(m.Properties.User) != 1 || m.Properties.User[0] != (packets.UserProperty{Key: "unit", Val: "C"}) {
		t.Errorf("user properties delivered: %+v, want unit=C", m.Properties.User)
	}

	// A denied publish is answered without its reason string.
	id := sub.NextID()
	if err := sub.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "bob/x", PacketID: id, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	pa, ok := sub.WaitPacket(packets.Puback, id, waitLong)
	if !ok || pa.ReasonCode != 0x87 {
		t.Fatalf("denied publish: %v 0x%02x, want PUBACK 0x87", ok, pa.ReasonCode)
	}
	if pa.Properties.ReasonString != "" {
		t.Errorf("reason string %q sent although Request Problem Information is 0", pa.Properties.ReasonString)
	}
}

// An acknowledgement that would exceed the client's Maximum Packet Size
// with its reason string is sent without it, never dropped.
func TestAckFitsMaximumPacketSize(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL})
	// A PUBACK 0x87 with mochi's reason string is 23 bytes; sizes around it
	// catch an estimate that leaves out the fixed header.
	for _, max := range []uint32{20, 21, 22, 23, 24, 100} {
		o := as(5, "alice", "small").options()
		o.Tweak = func(pk *packets.Packet) { pk.Properties.MaximumPacketSize = max }
		c, ack, err := mqtttest.Dial(tb.addr, o)
		if err != nil || ack.ReasonCode != 0 {
			t.Fatalf("max %d: connect: %v 0x%02x", max, err, ack.ReasonCode)
		}
		id := c.NextID()
		if err := c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			TopicName: "bob/x", PacketID: id, Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		pa, ok := c.WaitPacket(packets.Puback, id, 3*time.Second)
		if !ok || pa.ReasonCode != 0x87 {
			t.Errorf("max %d: PUBACK received %v code 0x%02x, want 0x87", max, ok, pa.ReasonCode)
		}
		_ = c.Close()
	}
}

// A client that sends more unacknowledged QoS 2 publishes than the
// server's Receive Maximum gets DISCONNECT 0x93 before the connection
// closes (MQTT 5 §4.9); a 3.1.1 client gets a closed connection only.
func TestReceiveMaximumExceeded(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL, conf: "max_inflight_messages 3\n"})
	for _, v := range []byte{4, 5} {
		c := connect(t, tb.addr, as(v, "alice", "flood"))
		for range 4 { // one more than the quota, none released
			if err := c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2},
				TopicName: "alice/q", PacketID: c.NextID(), Payload: []byte("x")}); err != nil {
				break
			}
		}
		if !c.waitClosed() {
			t.Fatalf("v%d: connection not closed past Receive Maximum", v)
		}
		d, got := c.WaitPacket(packets.Disconnect, 0, 0)
		switch {
		case v == 5 && (!got || d.ReasonCode != 0x93):
			t.Errorf("v5: DISCONNECT %v code 0x%02x, want 0x93", got, d.ReasonCode)
		case v == 4 && got:
			t.Errorf("3.1.1: got a DISCONNECT packet (code 0x%02x); 3.1.1 servers never send one", d.ReasonCode)
		}
	}
	// Others are still served.
	c := connect(t, tb.addr, as(5, "alice", "after"))
	if a := c.publish("alice/ok", "x", 1, false); a.code != 0 {
		t.Fatalf("publish after flood: 0x%02x", a.code)
	}
}

// A session taken over by a new connection of its owner ends with
// DISCONNECT 0x8E under MQTT 5 and with a plain close under 3.1.1.
func TestTakeoverDisconnectByVersion(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL})
	for _, v := range []byte{4, 5} {
		old := connect(t, tb.addr, as(v, "alice", "twice"))
		connect(t, tb.addr, as(v, "alice", "twice"))
		if !old.waitClosed() {
			t.Fatalf("v%d: old connection not closed", v)
		}
		d, got := old.WaitPacket(packets.Disconnect, 0, 0)
		switch {
		case v == 5 && (!got || d.ReasonCode != 0x8E):
			t.Errorf("v5: DISCONNECT %v code 0x%02x, want 0x8E", got, d.ReasonCode)
		case v == 4 && got:
			t.Errorf("3.1.1: got a DISCONNECT packet (code 0x%02x)", d.ReasonCode)
		}
	}
}

// At shutdown MQTT 5 clients get DISCONNECT 0x8B (server shutting down);
// 3.1.1 clients see the connection close.
func TestShutdownDisconnectByVersion(t *testing.T) {
	tb := startBroker(t, setup{acl: wireACL})
	v4 := connect(t, tb.addr, as(4, "alice", "old"))
	v5 := connect(t, tb.addr, as(5, "alice", "new"))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := tb.b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, c := range []*client{v4, v5} {
		if !c.waitClosed() {
			t.Fatalf("v%d: not closed at shutdown", c.Version())
		}
	}
	if d, got := v5.WaitPacket(packets.Disconnect, 0, 0); !got || d.ReasonCode != 0x8B {
		t.Errorf("v5: DISCONNECT %v code 0x%02x, want 0x8B", got, d.ReasonCode)
	}
	if d, got := v4.WaitPacket(packets.Disconnect, 0, 0); got {
		t.Errorf("3.1.1: got a DISCONNECT packet (code 0x%02x)", d.ReasonCode)
	}
}
