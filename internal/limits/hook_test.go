package limits

import (
	"bytes"
	"log/slog"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

type counts map[string]int

func (c counts) LimitHit(l string) { c[l]++ }

func newTestHook(t *testing.T, s Settings) (*Hook, *mqtt.Server, counts) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	ev := counts{}
	return New(Options{Server: srv, Settings: s, Events: ev}), srv, ev
}

func testClient(srv *mqtt.Server, id, user string, v byte) *mqtt.Client {
	cl := srv.NewClient(nil, "t", id, false)
	cl.Properties.ProtocolVersion = v
	cl.Properties.Username = []byte(user)
	return cl
}

func TestRetainedAccounting(t *testing.T) {
	h, srv, _ := newTestHook(t, Settings{MaxRetainedPerUser: 2, MaxRetainedBytesPerUser: 100})
	alice, bob := testClient(srv, "a", "alice", 5), testClient(srv, "b", "bob", 5)
	retain := func(cl *mqtt.Client, topic, payload string, r int64) {
		h.OnRetainMessage(cl, packets.Packet{TopicName: topic, Payload: []byte(payload)}, r)
	}
	steps := []struct {
		name        string
		do          func()
		user, topic string
		size        int64
		want        string
	}{
		{"first", nil, "alice", "t/1", 10, ""},
		{"second", func() { retain(alice, "t/1", "123456", 1) }, "alice", "t/2", 10, ""},
		{"third over count", func() { retain(alice, "t/2", "123456", 1) }, "alice", "t/3", 10, LimitRetainedPerUser},
		{"replace own", nil, "alice", "t/1", 90, ""},
		{"replace own over bytes", nil, "alice", "t/1", 93, LimitRetainedBytesUser},
		{"bob unaffected", nil, "bob", "t/3", 10, ""},
		{"bob takes t/1", func() { retain(bob, "t/1", "x", 1) }, "alice", "t/3", 10, ""},
		{"full again", func() { retain(alice, "t/3", "1", 1) }, "alice", "t/4", 10, LimitRetainedPerUser},
		{"cleared frees", func() { retain(alice, "t/3", "", -1) }, "alice", "t/4", 10, ""},
		{"expired frees", func() { retain(alice, "t/3", "1", 1); h.OnRetainedExpired("t/2") }, "alice", "t/4", 10, ""},
	}
	for _, st := range steps {
		if st.do != nil {
			st.do()
		}
		if got := h.retainedOver(st.user, st.topic, st.size); got != st.want {
			t.Errorf("%s: %q, want %q (usage %+v)", st.name, got, st.want, h.usage[st.user])
		}
	}
}

func TestSubscribeRefusalCodes(t *testing.T) {
	h, srv, ev := newTestHook(t, Settings{MaxTopicLength: 16, MaxTopicLevels: 3, MaxSubscriptions: 2})
	for _, v := range []byte{5, 4} {
		cl := testClient(srv, "c", "alice", v)
		cl.State.Subscriptions.Add("held", packets.Subscription{Filter: "held"})
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 9, Filters: packets.Subscriptions{
			{Filter: "held"}, {Filter: "a/b/c/d"}, {Filter: "new/1"}, {Filter: "x/really/long/filter"}, {Filter: "new/2"},
		}}
		out := h.OnSubscribe(cl, pk)
		var filters []string
		for _, f := range out.Filters {
			filters = append(filters, f.Filter)
		}
		if want := []string{"held", "", "new/1", "", ""}; !equal(filters, want) {
			t.Errorf("v%d: filters %q, want %q", v, filters, want)
		}
		if pk.Filters[1].Filter != "a/b/c/d" {
			t.Error("OnSubscribe changed the caller's filters")
		}
		// mochi answers the emptied filters 0x8F (3.1.1: 0x80).
		bad := byte(0x8F)
		if v == 4 {
			bad = 0x80
		}
		ack := h.OnPacketEncode(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}, PacketID: 9,
			ReasonCodes: []byte{0, bad, 0, bad, bad}})
		want := []byte{0, bad, 0, bad, 0x97}
		if v == 4 {
			want = []byte{0, 0x80, 0, 0x80, 0x80}
		}
		if !bytes.Equal(ack.ReasonCodes, want) {
			t.Errorf("v%d: SUBACK % x, want % x", v, ack.ReasonCodes, want)
		}
	}
	if ev[LimitTopicLevels] != 2 || ev[LimitTopicLength] != 2 || ev[LimitSubscriptions] != 2 {
		t.Errorf("counts %v", ev)
	}
}

func TestConnackForV3(t *testing.T) {
	h, srv, _ := newTestHook(t, Settings{})
	for _, tt := range []struct {
		name     string
		v        byte
		clean    bool
		assigned string
		code     byte
		want     byte
		typ      byte
	}{
		{"v3 success untouched", 4, true, "", 0, 0, packets.Connack},
		{"v3 auth code untouched", 4, true, "", 5, 5, packets.Connack},
		{"v3 persistent without id", 4, false, "xid", 0x80, 2, packets.Connack},
		{"v3 unspecified", 4, true, "", 0x80, 3, packets.Connack},
		{"v3 bad credentials", 4, true, "", 0x86, 4, packets.Connack},
		{"v3 protocol error closes", 4, true, "", 0x82, 0x82, packets.Reserved},
		{"v3 qos not supported closes", 4, true, "", 0x9B, 0x9B, packets.Reserved},
		{"v5 untouched", 5, true, "", 0x82, 0x82, packets.Connack},
	} {
		cl := testClient(srv, "c", "", tt.v)
		cl.Properties.Clean = tt.clean
		cl.Properties.Props.AssignedClientID = tt.assigned
		got := h.OnPacketEncode(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: tt.code})
		if got.ReasonCode != tt.want || got.FixedHeader.Type != tt.typ {
			t.Errorf("%s: type %d code 0x%02x, want type %d code 0x%02x", tt.name, got.FixedHeader.Type, got.ReasonCode, tt.typ, tt.want)
		}
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
