package broker_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// authRefused is the CONNACK code of a failed authentication (mosquitto's).
func authRefused(v byte) byte {
	if v == 5 {
		return 0x87
	}
	return 5
}

func bannedCode(v byte) byte {
	if v == 5 {
		return 0x9F
	}
	return 3
}

func idRefused(v byte) byte {
	if v == 5 {
		return 0x85
	}
	return 2
}

func TestConnackCodes(t *testing.T) {
	hardened := startBroker(t, setup{acl: tableBACL, conf: "ban_threshold 0\n"})
	noPasswd := startBroker(t, setup{users: map[string]string{}, anonymous: true, acl: tableBACL, conf: "ban_threshold 0\n"})
	for _, v := range []byte{4, 5} {
		cases := []struct {
			name string
			addr string
			o    opts
			want byte
		}{
			{"anonymous not allowed", hardened.addr, anon(v, "c1"), authRefused(v)},
			{"wrong password", hardened.addr, opts{v: v, id: "c2", user: "alice", hasUser: true, pass: "wrong", hasPass: true}, authRefused(v)},
			{"unknown user", hardened.addr, opts{v: v, id: "c3", user: "mallory", hasUser: true, pass: "x", hasPass: true}, authRefused(v)},
			{"username without password", hardened.addr, opts{v: v, id: "c4", user: "alice", hasUser: true}, authRefused(v)},
			{"password of another user", hardened.addr, opts{v: v, id: "c5", user: "alice", hasUser: true, pass: passwords["bob"], hasPass: true}, authRefused(v)},
			{"right password", hardened.addr, as(v, "alice", "c6"), 0},
			{"username without password_file", noPasswd.addr, as(v, "alice", "c7"), authRefused(v)},
			{"anonymous allowed", noPasswd.addr, anon(v, "c8"), 0},
		}
		for _, tc := range cases {
			t.Run(versionName(v)+"/"+tc.name, func(t *testing.T) {
				c, ack := dial(t, tc.addr, tc.o)
				if ack.ReasonCode != tc.want {
					t.Fatalf("CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, tc.want)
				}
				if tc.want != 0 && !c.waitClosed() {
					t.Error("connection still open after a refused CONNECT")
				}
				c.drop()
			})
		}
	}
	for _, line := range hardened.logs.Lines("authentication failed") {
		for _, pw := range passwords {
			if strings.Contains(line, pw) {
				t.Errorf("a password reached the log: %s", line)
			}
		}
		if strings.Contains(line, "wrong") {
			t.Errorf("a tried password reached the log: %s", line)
		}
	}
}

// TestBans: after ban_threshold wrong passwords for one user from one IP,
// that user is refused from that IP without a password check (the right
// password gets "server unavailable"), while the user from elsewhere and
// other users from that IP still log in; once the per-address allowance
// (4x) is used up, only users who logged in from there before do.
func TestBans(t *testing.T) {
	const threshold = 3
	tb := startBroker(t, setup{acl: tableBACL, conf: fmt.Sprintf("ban_threshold %d\n", threshold)})
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			// Each round uses its own source address; a first ban lasts
			// 2 s, so a round that was slower than that is retried.
			var ip string
			for round := 0; ; round++ {
				if round == 5 {
					t.Fatal("could not observe a ban within its 2 s lifetime in 5 rounds")
				}
				ip = fmt.Sprintf("127.0.%d.%d", v, 10+round)
				var last time.Time
				for i := range threshold {
					c, ack := dial(t, tb.addr, opts{v: v, id: fmt.Sprintf("f%d", i), user: "alice", hasUser: true, pass: "wrong", hasPass: true, local: ip})
					if ack.ReasonCode != authRefused(v) {
						t.Fatalf("failure %d: CONNACK 0x%02x", i, ack.ReasonCode)
					}
					c.drop()
					last = time.Now()
				}
				o := as(v, "alice", "right")
				o.local = ip
				c, ack := dial(t, tb.addr, o)
				c.drop()
				if ack.ReasonCode == bannedCode(v) {
					break
				}
				if time.Since(last) < time.Second {
					t.Fatalf("right password right after %d failures: CONNACK 0x%02x, want 0x%02x", threshold, ack.ReasonCode, bannedCode(v))
				}
			}
			if n := len(tb.logs.Lines("ban started", "user=alice", "ip="+ip, "listener="+listenerID)); n == 0 {
				t.Errorf("no ban log line for alice from %s:\n%s", ip, tb.logs)
			}
			if n := len(tb.logs.Lines("authentication failed", "user=alice", "ip="+ip, "listener="+listenerID, "reason=bad_credentials")); n < threshold {
				t.Errorf("%d failure lines with user, ip and listener, want %d", n, threshold)
			}
			if n := len(tb.logs.Lines("authentication failed", "user=alice", "ip="+ip, "reason=banned")); n == 0 {
				t.Error("the banned attempt was not logged")
			}

			// alice from another address, bob from the banned one.
			o := as(v, "alice", "elsewhere")
			o.local = fmt.Sprintf("127.0.%d.200", v)
			connect(t, tb.addr, o).disconnect()
			o = as(v, "bob", "bob-same-ip")
			o.local = ip
			connect(t, tb.addr, o).disconnect()

			// Other names from the banned address use up its allowance
			// (4 x threshold, alice's failures included); then a user who
			// never logged in from there is refused, while bob, who did,
			// still logs in.
			for i := threshold; i < 4*threshold; i++ {
				c, ack := dial(t, tb.addr, opts{v: v, id: fmt.Sprintf("g%d", i), user: fmt.Sprintf("guess%d", i), hasUser: true, pass: "x", hasPass: true, local: ip})
				if ack.ReasonCode != authRefused(v) {
					t.Fatalf("guess %d: CONNACK 0x%02x, want 0x%02x", i, ack.ReasonCode, authRefused(v))
				}
				c.drop()
			}
			last := time.Now()
			o = as(v, "admin", "admin-after")
			o.local = ip
			c, ack := dial(t, tb.addr, o)
			c.drop()
			// Only a machine stalled past the 2 s ban excuses a login here.
			if ack.ReasonCode != bannedCode(v) && time.Since(last) < time.Second {
				t.Errorf("admin after the per-address allowance: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, bannedCode(v))
			}
			o = as(v, "bob", "bob-after")
			o.local = ip
			connect(t, tb.addr, o).disconnect()
		})
	}
}

// TestWill: a Will on a topic the client may not write is refused at
// CONNECT (mochi #503 would publish and retain it); an allowed Will is
// delivered when the client vanishes.
func TestWill(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	bob := connect(t, tb.addr, as(5, "bob", "bob-watch"))
	bob.mustSubscribe("bob/#")
	watcher := connect(t, tb.addr, as(5, "alice", "alice-watch"))
	watcher.mustSubscribe("alice/#")
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			o := as(v, "alice", "alice-will-bad")
			o.will = &packets.Packet{TopicName: "bob/will", Payload: []byte("evil"), FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}}
			c, ack := dial(t, tb.addr, o)
			if ack.ReasonCode != authRefused(v) {
				t.Errorf("Will on bob/will: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, authRefused(v))
			}
			c.drop()

			o = as(v, "alice", "alice-will-sys")
			o.will = &packets.Packet{TopicName: "$SYS/broker/x", Payload: []byte("evil")}
			c, ack = dial(t, tb.addr, o)
			if ack.ReasonCode != authRefused(v) {
				t.Errorf("Will on $SYS: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, authRefused(v))
			}
			c.drop()

			topic := "alice/will-" + versionName(v)
			o = as(v, "alice", "alice-will-ok")
			o.will = &packets.Packet{TopicName: topic, Payload: []byte("gone"), FixedHeader: packets.FixedHeader{Qos: 1}}
			c = connect(t, tb.addr, o)
			c.drop()
			if !watcher.waitTopic(topic) {
				t.Fatalf("allowed Will %s not delivered", topic)
			}
			if m, _ := watcher.message(topic); string(m.Payload) != "gone" {
				t.Errorf("Will payload %q", m.Payload)
			}
		})
	}
	bobPub := connect(t, tb.addr, as(5, "bob", "bob-pub"))
	bobPub.publish("bob/end", "marker", 1, false)
	if !bob.waitTopic("bob/end") {
		t.Fatal("marker not delivered")
	}
	if got := bob.topics(); !slices.Equal(got, []string{"bob/end"}) {
		t.Errorf("bob received %v", got)
	}
	if n := len(tb.b.Server().Topics.Messages("bob/will")); n != 0 {
		t.Errorf("refused Will retained (%d)", n)
	}
}

// TestClientIDTakeover (mochi #398): bob cannot take alice's client id
// while she is connected. While she is offline he gets a fresh session
// (never hers, nor her queued messages), and hers is discarded.
func TestClientIDTakeover(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	pub := connect(t, tb.addr, as(5, "alice", "alice-pub"))
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			id := "alice-phone-" + versionName(v)
			o := as(v, "alice", id)
			o.persist = true
			alice := connect(t, tb.addr, o)
			alice.mustSubscribe("alice/inbox/#")

			thief, ack := dial(t, tb.addr, as(v, "bob", id))
			if ack.ReasonCode != idRefused(v) {
				t.Errorf("bob with alice's id while she is connected: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, idRefused(v))
			}
			thief.drop()
			alice.ping() // still connected

			alice.disconnect()
			tb.waitOffline(id)
			inbox := "alice/inbox/" + versionName(v)
			for i := range 2 {
				pub.publish(inbox, fmt.Sprintf("queued %d", i), 1, false)
			}
			thief, ack = dial(t, tb.addr, as(v, "bob", id))
			if ack.ReasonCode != 0 || ack.SessionPresent {
				t.Errorf("bob with alice's offline id: CONNACK 0x%02x session present %v, want 0 and false", ack.ReasonCode, ack.SessionPresent)
			}
			thief.ping()
			if got := thief.topics(); len(got) != 0 {
				t.Errorf("bob received alice's queued messages: %v", got)
			}
			thief.disconnect()
			tb.waitOffline(id)

			alice, ack = dial(t, tb.addr, o)
			if ack.ReasonCode != 0 || ack.SessionPresent {
				t.Fatalf("alice back: CONNACK 0x%02x session present %v, want 0 and false", ack.ReasonCode, ack.SessionPresent)
			}
			alice.disconnect()
		})
	}
}

// TestIdentityHygiene: with %u/%c patterns, names that would reach or
// widen other clients' topics are refused at CONNECT.
func TestIdentityHygiene(t *testing.T) {
	users := maps.Clone(passwords)
	for _, u := range []string{"al/ice", "al+ice", "al#ice", "$alice"} {
		users[u] = "pw-" + u
	}
	tb := startBroker(t, setup{users: users, acl: tableBACL + "pattern read clients/%c/#\n", conf: "ban_threshold 0\n"})
	for _, v := range []byte{4, 5} {
		for _, u := range []string{"al/ice", "al+ice", "al#ice", "$alice"} {
			t.Run(versionName(v)+"/user "+u, func(t *testing.T) {
				c, ack := dial(t, tb.addr, opts{v: v, id: "hyg", user: u, hasUser: true, pass: users[u], hasPass: true, keepalive: 60})
				if ack.ReasonCode != authRefused(v) {
					t.Errorf("CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, authRefused(v))
				}
				c.drop()
			})
		}
		for _, id := range []string{"a/b", "a+b", "a#b", "$id"} {
			t.Run(versionName(v)+"/client id "+id, func(t *testing.T) {
				c, ack := dial(t, tb.addr, as(v, "alice", id))
				if ack.ReasonCode != idRefused(v) {
					t.Errorf("CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, idRefused(v))
				}
				c.drop()
			})
		}
		t.Run(versionName(v)+"/empty client id gets one assigned", func(t *testing.T) {
			connect(t, tb.addr, as(v, "alice", "")).disconnect()
		})
	}
}

// TestKeepalive: keepalive 0 must not mean forever. MQTT 5 clients are
// told max_keepalive; 3.1.1 clients above it are refused (mosquitto 2.0.12+).
func TestKeepalive(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_keepalive 30\n"})
	for _, tc := range []struct {
		v        byte
		ka       uint16
		code     byte
		serverKA uint16 // v5: 0 = property absent
	}{
		{5, 0, 0, 30},
		{5, 100, 0, 30},
		{5, 20, 0, 0},
		{4, 20, 0, 0},
		{4, 30, 0, 0},
		{4, 31, 2, 0},
		{4, 65535, 2, 0},
	} {
		t.Run(fmt.Sprintf("%s/%d", versionName(tc.v), tc.ka), func(t *testing.T) {
			o := as(tc.v, "alice", "ka")
			o.keepalive = tc.ka
			c, ack := dial(t, tb.addr, o)
			defer c.drop()
			if ack.ReasonCode != tc.code {
				t.Fatalf("CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, tc.code)
			}
			if tc.v != 5 {
				return
			}
			got := uint16(0)
			if ack.Properties.ServerKeepAliveFlag {
				got = ack.Properties.ServerKeepAlive
			}
			if got != tc.serverKA {
				t.Errorf("Server Keep Alive %d, want %d", got, tc.serverKA)
			}
		})
	}
}

// TestMessageSizeLimit: larger payloads are dropped; MQTT 5 QoS 1 is told 0x95.
func TestMessageSizeLimit(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "message_size_limit 16\n"})
	sub := connect(t, tb.addr, as(5, "alice", "sub"))
	sub.mustSubscribe("alice/#")
	big := strings.Repeat("x", 17)
	for _, tc := range []struct {
		v     byte
		qos   byte
		types []byte
		code  byte
	}{
		{5, 1, []byte{packets.Puback}, 0x95},
		{5, 0, nil, noAck},
		{5, 2, []byte{packets.Pubrec}, 0x95},
		{4, 1, []byte{packets.Puback}, 0},
		{4, 2, []byte{packets.Pubrec, packets.Pubcomp}, 0},
		{4, 0, nil, noAck},
	} {
		t.Run(fmt.Sprintf("%s/qos%d", versionName(tc.v), tc.qos), func(t *testing.T) {
			c := connect(t, tb.addr, as(tc.v, "alice", "big"))
			defer c.disconnect()
			if got := c.publish("alice/big", big, tc.qos, false); got.code != tc.code || !slices.Equal(got.types, tc.types) {
				t.Errorf("oversized publish: types %v code 0x%02x, want %v 0x%02x", got.types, got.code, tc.types, tc.code)
			}
			// At the limit, and telling the subtests apart.
			small := fmt.Sprintf("%-16s", fmt.Sprintf("v%d-qos%d", tc.v, tc.qos))
			if got := c.publish("alice/small", small, tc.qos, false).code; got >= 0x80 && got != noAck {
				t.Errorf("publish at the limit: 0x%02x", got)
			}
		})
	}
	if !sub.WaitUntil(waitLong, func(s mqtttest.State) bool { return len(s.Messages) >= 6 }) {
		var got []string
		for _, m := range messages(sub) {
			got = append(got, strings.TrimSpace(string(m.Payload)))
		}
		t.Fatalf("got %q, want 6 messages at the limit; broker log:\n%s", got, tb.logs.String())
	}
	sub.quietFor(waitQuiet)
	for _, tp := range sub.topics() {
		if tp != "alice/small" {
			t.Errorf("delivered %s", tp)
		}
	}
}

// TestOwnTakeover: a user reconnecting with her own client id replaces the
// old connection and keeps full access (the old connection's end must not
// drop the new one's identity).
func TestOwnTakeover(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	for _, v := range []byte{4, 5} {
		for _, persist := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/persist=%v", versionName(v), persist), func(t *testing.T) {
				o := as(v, "alice", fmt.Sprintf("own-%d-%v", v, persist))
				o.persist = persist
				first := connect(t, tb.addr, o)
				first.mustSubscribe("alice/#")
				second := connect(t, tb.addr, o)
				if !first.waitClosed() {
					t.Fatal("first connection not closed by the takeover")
				}
				second.mustSubscribe("alice/#")
				if got := second.publish("alice/take", "x", 1, false); got.code >= 0x80 {
					t.Fatalf("publish after takeover: 0x%02x", got.code)
				}
				if !second.waitTopic("alice/take") {
					t.Fatal("message not delivered after takeover")
				}
				second.disconnect()
			})
		}
	}
}

// TestSharedSubscriptions: a $share filter is judged by the filter after
// the group (mochi passes it whole to the ACL hook).
func TestSharedSubscriptions(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			// Own client id and group per version: a member of the previous
			// subtest's group may still be leaving and take the message.
			g := "$share/g" + versionName(v) + "/"
			c := connect(t, tb.addr, as(v, "alice", "share-"+versionName(v)))
			defer c.disconnect()
			codes := c.subscribe(g+"alice/#", g+"#", g+"bob/x")
			want := []byte{1, refused(v), refused(v)}
			if !slices.Equal(codes, want) {
				t.Fatalf("SUBACK %x, want %x", codes, want)
			}
			c.publish("alice/shared", "x", 1, false)
			if !c.waitTopic("alice/shared") {
				t.Error("not delivered through the shared subscription")
			}
		})
	}
}
