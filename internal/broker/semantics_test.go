package broker_test

import (
	"fmt"
	"os"
	"slices"
	"testing"
)

// tableC starts a broker with mosquitto.md §3 (C): acl-semantics.acl,
// anonymous clients allowed, alice, bob and admin in the password file.
func tableC(t *testing.T, conf string) *testBroker {
	t.Helper()
	data, err := os.ReadFile("testdata/acl-semantics.acl")
	if err != nil {
		t.Fatal(err)
	}
	return startBroker(t, setup{acl: string(data), anonymous: true, conf: conf})
}

// TestTableCWrites checks table C's writes with MQTT 5 QoS 1 answers.
func TestTableCWrites(t *testing.T) {
	tb := tableC(t, "")
	cases := []struct {
		who, id string // who "" = anonymous
		topic   string
		allow   bool
	}{
		{"", "anon-w", "anon/x", true},
		{"", "anon-w", "public/x", false},
		{"alice", "alice-w", "anon/x", false},
		{"alice", "alice-w", "shared/x", true},
		{"alice", "alice-w", "shared/locked", false},
		{"alice", "alice-w", "ro/x", false},
		{"alice", "alice-w", "alice/x", true},
		{"alice", "alice-w", "alice/private/x", false},
		{"alice", "alice-w", "alice/private/open", true},
		{"bob", "bob-w", "shared/x", true},
		{"bob", "bob-w", "shared/locked", true},
		{"bob", "bob-w", "bob/private/x", false},
		{"alice", "c1", "clients/c1/x", false},
	}
	clients := map[string]*client{}
	for _, tc := range cases {
		c := clients[tc.id]
		if c == nil {
			o := anon(5, tc.id)
			if tc.who != "" {
				o = as(5, tc.who, tc.id)
			}
			c = connect(t, tb.addr, o)
			clients[tc.id] = c
		}
		got := c.publish(tc.topic, "w", 1, false).code
		if ok := got < 0x80; ok != tc.allow || !tc.allow && got != 0x87 {
			t.Errorf("%s (%q) writes %s: 0x%02x, want allow=%v (deny = 0x87)", tc.id, tc.who, tc.topic, got, tc.allow)
		}
	}
}

// seededC are the retained messages admin stores for table C's reads.
var seededC = []string{
	"anon/x", "public/x", "shared/x", "shared/locked", "ro/x",
	"alice/x", "alice/private/x", "alice/private/open",
	"bob/x", "bob/private/x", "clients/c1/x", "clients/c2/x",
}

// TestTableCReads checks which retained messages, seeded by admin, reach
// each client: in strict mode through a subscription to each seeded topic
// (granted exactly for the readable ones), in mosquitto mode through "#".
func TestTableCReads(t *testing.T) {
	reads := []struct {
		who, id string
		want    []string
	}{
		{"", "anon-r", []string{"anon/x", "public/x"}},
		{"alice", "alice-r", []string{"shared/x", "ro/x", "alice/x", "alice/private/open"}},
		{"alice", "c1", []string{"shared/x", "ro/x", "alice/x", "alice/private/open", "clients/c1/x"}},
		{"bob", "bob-r", []string{"shared/x", "shared/locked", "bob/x"}},
		{"admin", "admin-r", seededC},
	}
	for _, strict := range []bool{true, false} {
		name, conf := "strict", ""
		if !strict {
			name, conf = "mosquitto", "strict_subscribe false\n"
		}
		t.Run(name, func(t *testing.T) {
			tb := tableC(t, conf)
			admin := connect(t, tb.addr, as(5, "admin", "admin-seed"))
			for _, tp := range seededC {
				if got := admin.publish(tp, "seed "+tp, 1, true).code; got >= 0x80 {
					t.Fatalf("admin seeding %s: 0x%02x", tp, got)
				}
			}
			for _, v := range []byte{4, 5} {
				for _, r := range reads {
					t.Run(fmt.Sprintf("%s/%s", versionName(v), r.id), func(t *testing.T) {
						o := anon(v, r.id)
						if r.who != "" {
							o = as(v, r.who, r.id)
						}
						c := connect(t, tb.addr, o)
						defer c.disconnect()
						if strict {
							codes := c.subscribe(seededC...)
							for i, tp := range seededC {
								want := refused(v)
								if slices.Contains(r.want, tp) {
									want = 1
								}
								if codes[i] != want {
									t.Errorf("SUBACK %s = 0x%02x, want 0x%02x", tp, codes[i], want)
								}
							}
							wantAll := byte(1)
							if r.who != "admin" {
								wantAll = refused(v)
							}
							if got := c.subscribe("#")[0]; got != wantAll {
								t.Errorf("SUBACK # = 0x%02x, want 0x%02x", got, wantAll)
							}
						} else {
							c.mustSubscribe("#")
						}
						for _, tp := range r.want {
							if !c.waitTopic(tp) {
								t.Errorf("retained %s not delivered", tp)
							}
						}
						c.quietFor(waitQuiet)
						if got := sorted(c.topics()); !slices.Equal(got, sorted(r.want)) {
							t.Errorf("delivered %v, want %v", got, sorted(r.want))
						}
					})
				}
			}
		})
	}
}
