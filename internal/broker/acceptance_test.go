package broker_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The hardened jzombie setup of mosquitto.md §3 (B): no anonymous
// clients, alice, bob and admin in the password file, one pattern.
const tableBACL = "pattern readwrite %u/#\n"

func versionName(v byte) string {
	if v == 5 {
		return "v5"
	}
	return "v311"
}

// refused is the SUBACK failure code of a protocol version.
func refused(v byte) byte {
	if v == 5 {
		return 0x87
	}
	return 0x80
}

// seedTableB stores the retained fixtures alice/r, bob/r, bob/sensors/r.
func seedTableB(t *testing.T, addr string) {
	t.Helper()
	a := connect(t, addr, as(5, "alice", "seed-alice"))
	b := connect(t, addr, as(5, "bob", "seed-bob"))
	for _, p := range []struct {
		c     *client
		topic string
	}{{a, "alice/r"}, {b, "bob/r"}, {b, "bob/sensors/r"}} {
		if got := p.c.publish(p.topic, "retained", 1, true); got.code >= 0x80 {
			t.Fatalf("seed %s: 0x%02x", p.topic, got.code)
		}
	}
	a.disconnect()
	b.disconnect()
}

// TestTableBSubscribe runs table B's subscriptions: Moat's strict default
// refuses every filter alice may not read in full; with strict_subscribe
// false the grants and per-message filtering are exactly mosquitto's.
func TestTableBSubscribe(t *testing.T) {
	type row struct {
		filter  string
		granted bool
		want    []string // delivered to alice, retained included
	}
	own := []string{"alice/r", "alice/sensors", "alice/x"}
	modes := []struct {
		name string
		conf string
		rows []row
	}{
		{"strict", "", []row{
			{"alice/#", true, own},
			{"#", false, nil},
			{"+/sensors", false, nil},
			{"+/sensors/#", false, nil},
			{"+/r", false, nil},
			{"bob/#", false, nil},
			{"$SYS/#", false, nil},
		}},
		{"mosquitto", "strict_subscribe false\n", []row{
			{"alice/#", true, own},
			{"#", true, own},
			{"+/sensors", true, []string{"alice/sensors"}},
			{"+/sensors/#", true, []string{"alice/sensors"}},
			{"+/r", true, []string{"alice/r"}},
			{"bob/#", true, nil},
			{"$SYS/#", true, nil},
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			tb := startBroker(t, setup{acl: tableBACL, conf: m.conf + "sys_interval 1\n"})
			seedTableB(t, tb.addr)
			pubA := connect(t, tb.addr, as(5, "alice", "pub-alice"))
			pubB := connect(t, tb.addr, as(5, "bob", "pub-bob"))
			for _, v := range []byte{4, 5} {
				for i, r := range m.rows {
					t.Run(fmt.Sprintf("%s/%s", versionName(v), r.filter), func(t *testing.T) {
						sub := connect(t, tb.addr, as(v, "alice", fmt.Sprintf("sub-%d-%d", v, i)))
						codes := sub.subscribe(r.filter, "alice/end")
						want := byte(1)
						if !r.granted {
							want = refused(v)
						}
						if codes[0] != want {
							t.Errorf("SUBACK %s = 0x%02x, want 0x%02x", r.filter, codes[0], want)
						}
						if codes[1] != 1 {
							t.Fatalf("SUBACK alice/end = 0x%02x, want 1", codes[1])
						}
						pubA.publish("alice/x", "live", 1, false)
						pubA.publish("alice/sensors", "live", 1, false)
						pubB.publish("bob/x", "live", 1, false)
						pubB.publish("bob/sensors", "live", 1, false)
						// Every message above is queued to alice before the marker.
						pubA.publish("alice/end", "marker", 1, false)
						if !sub.waitTopic("alice/end") {
							t.Fatalf("marker not delivered: %v", sub.err())
						}
						for _, w := range r.want {
							if !sub.waitTopic(w) {
								t.Errorf("%s not delivered", w)
							}
						}
						if got := sorted(without(sub.topics(), "alice/end")); !slices.Equal(got, sorted(r.want)) {
							t.Errorf("delivered %v, want %v", got, sorted(r.want))
						}
						sub.disconnect()
					})
				}
			}
		})
	}
}

// TestTableBPublish runs table B's publishes: alice writing into bob's
// tree is acknowledged as if OK under 3.1.1 (and never delivered; the
// connection stays up), refused with 0x87 under MQTT 5.
func TestTableBPublish(t *testing.T) {
	for _, mode := range []struct{ name, conf, bobFilter string }{
		{"strict", "", "bob/#"},
		{"mosquitto", "strict_subscribe false\n", "#"},
	} {
		t.Run(mode.name, func(t *testing.T) {
			tb := startBroker(t, setup{acl: tableBACL, conf: mode.conf})
			bob := connect(t, tb.addr, as(5, "bob", "bob-sub"))
			bob.mustSubscribe(mode.bobFilter)
			bobPub := connect(t, tb.addr, as(5, "bob", "bob-pub"))

			cases := []struct {
				v         byte
				topic     string
				qos       byte
				retain    bool
				wantTypes []byte
				wantCodes []byte // any of
			}{
				{4, "bob/x", 0, false, nil, []byte{noAck}},
				{4, "bob/x", 1, false, []byte{packets.Puback}, []byte{0}},
				{4, "bob/x", 2, false, []byte{packets.Pubrec, packets.Pubcomp}, []byte{0}},
				{5, "bob/x", 0, false, nil, []byte{noAck}},
				{5, "bob/x", 1, false, []byte{packets.Puback}, []byte{0x87}},
				{5, "bob/x", 2, false, []byte{packets.Pubrec}, []byte{0x87}},
				{5, "bob/evil", 1, true, []byte{packets.Puback}, []byte{0x87}},
				{4, "bob/evil", 1, true, []byte{packets.Puback}, []byte{0}},
				{5, "$SYS/foo", 1, false, []byte{packets.Puback}, []byte{0x87}},
				{5, "$SYS/foo", 2, false, []byte{packets.Pubrec}, []byte{0x87}},
				{4, "$SYS/foo", 1, false, []byte{packets.Puback}, []byte{0}},
				{4, "$SYS/foo", 2, false, []byte{packets.Pubrec, packets.Pubcomp}, []byte{0}},
				{5, "alice/ok", 1, false, []byte{packets.Puback}, []byte{0x00, 0x10}},
				{4, "alice/ok", 1, false, []byte{packets.Puback}, []byte{0x00}},
			}
			for i, tc := range cases {
				t.Run(fmt.Sprintf("%s/qos%d/%s/retain=%v", versionName(tc.v), tc.qos, tc.topic, tc.retain), func(t *testing.T) {
					alice := connect(t, tb.addr, as(tc.v, "alice", fmt.Sprintf("alice-%d", i)))
					got := alice.publish(tc.topic, "from alice", tc.qos, tc.retain)
					if !slices.Equal(got.types, tc.wantTypes) || !slices.Contains(tc.wantCodes, got.code) {
						t.Errorf("answer types %v code 0x%02x, want types %v code in %x", got.types, got.code, tc.wantTypes, tc.wantCodes)
					}
					// Packets are handled in order: after the PINGRESP the
					// publish was processed, and the connection is still up.
					alice.ping()
					marker := fmt.Sprintf("bob/end-%d", i)
					bobPub.publish(marker, "marker", 1, false)
					if !bob.waitTopic(marker) {
						t.Fatalf("marker not delivered: %v", bob.err())
					}
					for _, tp := range bob.topics() {
						if !strings.HasPrefix(tp, "bob/end-") {
							t.Errorf("bob received %s", tp)
						}
					}
					if tc.retain {
						if n := len(tb.b.Server().Topics.Messages(tc.topic)); n != 0 {
							t.Errorf("%s retained (%d messages)", tc.topic, n)
						}
					}
					if alice.err() != nil {
						t.Errorf("alice disconnected: %v", alice.err())
					}
				})
			}
		})
	}
}
