package broker_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

const persistConf = "persistence true\npersistence_location store\npersistence_encryption off\n"

// restart closes tb's broker and starts a new one from the same files and
// store; the listener gets a new port.
func (tb *testBroker) restart(listener string) *testBroker {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := tb.b.Close(ctx); err != nil {
		tb.t.Fatalf("close: %v", err)
	}
	n := startConf(tb.t, tb.dir, tb.conf, listener)
	n.passwd, n.acl = tb.passwd, tb.acl
	return n
}

// session reports the username of the session mochi holds for id.
func (tb *testBroker) session(id string) (user string, ok bool) {
	cl, ok := tb.b.Server().Clients.Get(id)
	if !ok {
		return "", false
	}
	return string(cl.Properties.Username), true
}

// waitNoSession polls until no session is held for id.
func (tb *testBroker) waitNoSession(id string) bool {
	deadline := time.Now().Add(waitLong)
	for {
		if _, ok := tb.session(id); !ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitOffline polls until the session for id, if any, has no connection:
// a DISCONNECT is handled after the client sent it.
func (tb *testBroker) waitOffline(id string) {
	tb.t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		cl, ok := tb.b.Server().Clients.Get(id)
		if !ok || cl.Closed() {
			return
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("session %s still connected", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitQueued polls until the offline session id holds n messages: mochi
// acknowledges a publish before it fans it out, and a session resumed in
// between would miss what is fanned out to its old record afterwards.
func (tb *testBroker) waitQueued(id string, n int) {
	tb.t.Helper()
	moattest.Eventually(tb.t, waitLong, fmt.Sprintf("%d messages queued for %s", n, id), func() bool {
		cl, ok := tb.b.Server().Clients.Get(id)
		return ok && cl.State.Inflight.Len() >= n
	})
}

func persistent(o opts) opts {
	o.persist = true
	return o
}

// resume reconnects o's persistent session and requires it to be present.
func resume(t *testing.T, addr string, o opts) *client {
	t.Helper()
	c, ack := dial(t, addr, o)
	if ack.ReasonCode != 0 || !ack.SessionPresent {
		t.Fatalf("%s resumes: CONNACK 0x%02x session present %v, want 0 and true", o.id, ack.ReasonCode, ack.SessionPresent)
	}
	return c
}

// fresh connects and requires a new session (session present 0).
func fresh(t *testing.T, addr string, o opts) *client {
	t.Helper()
	c, ack := dial(t, addr, o)
	if ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("%s (user %s): CONNACK 0x%02x session present %v, want 0 and false", o.id, o.user, ack.ReasonCode, ack.SessionPresent)
	}
	return c
}

// expectOnly waits for marker and requires that nothing but want arrived.
func expectOnly(t *testing.T, c *client, marker string, want ...string) {
	t.Helper()
	if !c.waitTopic(marker) {
		t.Fatalf("marker %s not delivered; got %v", marker, c.topics())
	}
	if got := sorted(without(c.topics(), marker)); !slices.Equal(got, sorted(want)) {
		t.Errorf("received %v, want %v", got, sorted(want))
	}
}

// Alice may read news/# and secret/# until the reload takes secret/#
// away; bob publishes both.
const (
	queuedACL = "user alice\ntopic read news/#\ntopic read secret/#\n" +
		"user bob\ntopic readwrite news/#\ntopic readwrite secret/#\n"
	queuedACLAfter = "user alice\ntopic read news/#\n" +
		"user bob\ntopic readwrite news/#\ntopic readwrite secret/#\n"
)

// TestQueuedMessagesMeetACLInForce: messages queued for an offline
// session, and in flight unacknowledged when it dropped, are checked
// against the ACL in force when they are delivered, not when they were
// queued: after a reload or a restart that took the read right away,
// the resumed session does not get them.
func TestQueuedMessagesMeetACLInForce(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v)+"/queued offline, reload", func(t *testing.T) {
			tb := startBroker(t, setup{acl: queuedACL})
			o := persistent(as(v, "alice", "alice-q-"+versionName(v)))
			alice := connect(t, tb.addr, o)
			alice.mustSubscribe("news/#", "secret/#")
			alice.disconnect()
			tb.waitOffline(o.id)
			bob := connect(t, tb.addr, as(5, "bob", "bob-q"))
			bob.publish("secret/1", "queued", 1, false)
			bob.publish("news/1", "queued", 1, false)
			tb.waitQueued(o.id, 2)

			writeFile(t, tb.acl, queuedACLAfter)
			if err := tb.b.Reload(); err != nil {
				t.Fatal(err)
			}
			alice = resume(t, tb.addr, o)
			bob.publish("news/end", "marker", 1, false)
			expectOnly(t, alice, "news/end", "news/1")
		})

		t.Run(versionName(v)+"/in flight unacknowledged, reload", func(t *testing.T) {
			tb := startBroker(t, setup{acl: queuedACL})
			o := persistent(as(v, "alice", "alice-f-"+versionName(v)))
			m := o.options()
			m.AutoAck = false // the message stays in flight
			raw, ack, err := mqtttest.Dial(tb.addr, m)
			if err != nil || ack.ReasonCode != 0 {
				t.Fatalf("connect: %v 0x%02x", err, ack.ReasonCode)
			}
			alice := &client{Client: raw, t: t}
			t.Cleanup(func() { _ = raw.Close() })
			alice.MustSubscribe(t, 1, "news/#", "secret/#")
			bob := connect(t, tb.addr, as(5, "bob", "bob-f"))
			bob.publish("secret/2", "in flight", 1, false)
			bob.publish("news/2", "in flight", 1, false)
			if !alice.waitTopic("news/2") {
				t.Fatalf("first delivery missing: %v", alice.topics())
			}
			alice.drop()
			tb.waitOffline(o.id)

			writeFile(t, tb.acl, queuedACLAfter)
			if err := tb.b.Reload(); err != nil {
				t.Fatal(err)
			}
			alice = resume(t, tb.addr, o)
			bob.publish("news/end", "marker", 1, false)
			// news/2 comes again (DUP): it was never acknowledged.
			expectOnly(t, alice, "news/end", "news/2")
		})

		if v == 5 {
			t.Run("v5/waiting for receive quota on a live connection, reload", func(t *testing.T) {
				tb := startBroker(t, setup{acl: queuedACL})
				m := as(5, "alice", "alice-quota").options()
				m.AutoAck = false
				conn, err := net.Dial("tcp", tb.addr)
				if err != nil {
					t.Fatal(err)
				}
				raw := mqtttest.New(conn, m)
				t.Cleanup(func() { _ = raw.Close() })
				pk := mqtttest.ConnectPacket(m)
				pk.Properties.ReceiveMaximum = 1 // one delivery in flight at a time
				b, err := mqtttest.Encode(pk, 5)
				if err != nil {
					t.Fatal(err)
				}
				if err := raw.WriteBytes(b); err != nil {
					t.Fatal(err)
				}
				if ack, ok := raw.WaitPacket(packets.Connack, 0, waitLong); !ok || ack.ReasonCode != 0 {
					t.Fatalf("CONNACK %v 0x%02x", ok, ack.ReasonCode)
				}
				alice := &client{Client: raw, t: t}
				alice.MustSubscribe(t, 1, "news/#", "secret/#")
				bob := connect(t, tb.addr, as(5, "bob", "bob-quota"))
				for _, topic := range []string{"news/1", "secret/1"} {
					bob.publish(topic, "x", 1, false)
				}
				first, ok := raw.WaitPacket(packets.Publish, 0, waitLong)
				if !ok || first.TopicName != "news/1" {
					t.Fatalf("first delivery %q %v", first.TopicName, ok)
				}
				writeFile(t, tb.acl, queuedACLAfter)
				if err := tb.b.Reload(); err != nil {
					t.Fatal(err)
				}
				// The acknowledgement frees the quota for the next delivery,
				// which mochi sends without asking the ACL.
				alice.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: first.PacketID})
				bob.publish("news/end", "marker", 1, false)
				next, ok := raw.WaitPacket(packets.Publish, 0, waitLong)
				if !ok || next.TopicName != "news/end" {
					t.Fatalf("after the reload got %q, want the marker news/end; all: %v", next.TopicName, alice.topics())
				}
			})
		}

		t.Run(versionName(v)+"/queued offline, restart", func(t *testing.T) {
			tb := startBroker(t, setup{acl: queuedACL, conf: persistConf})
			o := persistent(as(v, "alice", "alice-r-"+versionName(v)))
			alice := connect(t, tb.addr, o)
			alice.mustSubscribe("news/#", "secret/#")
			alice.disconnect()
			tb.waitOffline(o.id)
			bob := connect(t, tb.addr, as(5, "bob", "bob-r"))
			bob.publish("secret/3", "queued", 1, false)
			bob.publish("news/3", "queued", 1, false)
			tb.waitQueued(o.id, 2)
			bob.disconnect()

			writeFile(t, tb.acl, queuedACLAfter)
			tb = tb.restart(listenerID)
			alice = resume(t, tb.addr, o)
			bob = connect(t, tb.addr, as(5, "bob", "bob-r"))
			bob.publish("news/end", "marker", 1, false)
			expectOnly(t, alice, "news/end", "news/3")
		})
	}
}

// perListenerConf has two listeners with their own password and ACL
// files naming the same users: a TCP one and a WebSocket one.
func perListenerConf(t *testing.T, dir string, persist bool) string {
	t.Helper()
	var c strings.Builder
	c.WriteString("per_listener_settings true\nadmin_listener off\n")
	if persist {
		c.WriteString(persistConf)
	}
	for _, l := range []string{"listener 0 127.0.0.1\n", "listener 0 127.0.0.1\nprotocol websockets\n"} {
		n := strings.Count(c.String(), "listener 0")
		pw := filepath.Join(dir, fmt.Sprintf("passwd%d", n))
		aclPath := filepath.Join(dir, fmt.Sprintf("acl%d", n))
		writePasswd(t, pw, passwords)
		writeFile(t, aclPath, tableBACL)
		fmt.Fprintf(&c, "%sallow_anonymous false\npassword_file %s\nacl_file %s\n", l, pw, aclPath)
	}
	conf := filepath.Join(dir, "moat.conf")
	writeFile(t, conf, c.String())
	return conf
}

const wsListenerID = "ws:127.0.0.1:0"

// dialWS connects over the WebSocket listener of tb.
func dialWS(t *testing.T, tb *testBroker, o opts) (*client, mqttAck) {
	t.Helper()
	a := tb.b.Addr(wsListenerID)
	if a == nil {
		t.Fatal("no websocket listener")
	}
	conn, err := mqtttest.DialWS("ws://"+a.String()+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, ack, err := mqtttest.Connect(conn, o.options())
	if err != nil {
		t.Fatalf("%s over websocket: %v", o.id, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{Client: c, t: t}, mqttAck{code: ack.ReasonCode, present: ack.SessionPresent}
}

type mqttAck struct {
	code    byte
	present bool
}

// TestSessionBelongsToListenerScope: under per_listener_settings a
// same-named user on another listener is another owner. It neither
// resumes the session of the other scope (nor gets its queued messages)
// nor takes over a live one; an offline session of the other scope is
// discarded and the newcomer gets a fresh one. Sessions restored after a
// restart keep their scope.
func TestSessionBelongsToListenerScope(t *testing.T) {
	dir := t.TempDir()
	conf := perListenerConf(t, dir, true)
	tb := startConf(t, dir, conf, listenerID)
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v)+"/live session", func(t *testing.T) {
			id := "dev-live-" + versionName(v)
			alice := connect(t, tb.addr, persistent(as(v, "alice", id)))
			alice.mustSubscribe("alice/#")
			other, ack := dialWS(t, tb, persistent(as(v, "alice", id)))
			if ack.code != idRefused(v) {
				t.Errorf("alice of the other listener with a live id: CONNACK 0x%02x, want 0x%02x", ack.code, idRefused(v))
			}
			other.drop()
			alice.ping()
			alice.disconnect()
		})
		t.Run(versionName(v)+"/offline session", func(t *testing.T) {
			id := "dev-off-" + versionName(v)
			alice := connect(t, tb.addr, persistent(as(v, "alice", id)))
			alice.mustSubscribe("alice/#")
			alice.disconnect()
			tb.waitOffline(id)
			pub := connect(t, tb.addr, as(5, "alice", "pub-"+id))
			pub.publish("alice/queued", "for the tcp session", 1, false)

			other, ack := dialWS(t, tb, persistent(as(v, "alice", id)))
			if ack.code != 0 || ack.present {
				t.Fatalf("alice of the other listener: CONNACK 0x%02x session present %v, want 0 and false", ack.code, ack.present)
			}
			wsPub, _ := dialWS(t, tb, as(5, "alice", "ws-pub-"+id))
			other.mustSubscribe("alice/end")
			wsPub.publish("alice/end", "marker", 1, false)
			expectOnly(t, other, "alice/end")
			other.disconnect()
			tb.waitOffline(id)
			// The old session was discarded, not kept behind the new one.
			fresh(t, tb.addr, persistent(as(v, "alice", id))).disconnect()
		})
	}

	t.Run("restored from the store", func(t *testing.T) {
		for _, id := range []string{"dev-a", "dev-b"} {
			alice := connect(t, tb.addr, persistent(as(5, "alice", id)))
			alice.mustSubscribe("alice/#")
			alice.disconnect()
			tb.waitOffline(id)
		}
		pub := connect(t, tb.addr, as(5, "alice", "pub-restored"))
		pub.publish("alice/queued", "for the tcp sessions", 1, false)
		pub.disconnect()
		tb := tb.restart(listenerID)

		other, ack := dialWS(t, tb, persistent(as(5, "alice", "dev-a")))
		if ack.code != 0 || ack.present {
			t.Fatalf("alice of the other listener after restart: CONNACK 0x%02x session present %v, want 0 and false", ack.code, ack.present)
		}
		other.mustSubscribe("alice/end")
		wsPub, _ := dialWS(t, tb, as(5, "alice", "ws-pub-restored"))
		wsPub.publish("alice/end", "marker", 1, false)
		expectOnly(t, other, "alice/end")

		// The owner of the other restored session still gets it back.
		owner := resume(t, tb.addr, persistent(as(5, "alice", "dev-b")))
		if !owner.waitTopic("alice/queued") {
			t.Errorf("owner's queued message missing after restart: %v", owner.topics())
		}
	})
}

// squatACL lets every user read and write public/#, so only session
// ownership keeps one user's queued messages from another.
const squatACL = tableBACL + "pattern readwrite public/#\n"

// TestClientIDSquatting: an offline session of another user never locks
// the owner of a client id out, and is never handed over: the newcomer
// gets a fresh session, the old one and its queued messages are
// discarded. A live session of another user still refuses the newcomer.
func TestClientIDSquatting(t *testing.T) {
	tb := startBroker(t, setup{acl: squatACL})
	pub := connect(t, tb.addr, as(5, "alice", "squat-pub"))
	hostile := []string{"alice-phone", `dev "quoted" ip=203.0.113.50 `, "dev\nlevel=ERROR msg=forged\x1b[31m"}
	for _, v := range []byte{4, 5} {
		for n, base := range hostile {
			t.Run(fmt.Sprintf("%s/%d", versionName(v), n), func(t *testing.T) {
				id := base + "-" + versionName(v)
				squat := connect(t, tb.addr, persistent(as(v, "bob", id)))
				squat.mustSubscribe("public/#", "bob/#")
				squat.disconnect()
				tb.waitOffline(id)
				pub.publish("public/queued", "for bob", 1, false)

				alice := fresh(t, tb.addr, persistent(as(v, "alice", id)))
				if u, _ := tb.session(id); u != "alice" {
					t.Errorf("session of %s belongs to %q, want alice", id, u)
				}
				alice.mustSubscribe("alice/#")
				pub.publish("public/after", "bob's subscription is gone", 1, false)
				pub.publish("alice/end", "marker", 1, false)
				expectOnly(t, alice, "alice/end")

				// Now alice's live session refuses bob.
				thief, ack := dial(t, tb.addr, persistent(as(v, "bob", id)))
				if ack.ReasonCode != idRefused(v) {
					t.Errorf("bob against alice's live session: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, idRefused(v))
				}
				thief.waitClosed()
				if got := thief.topics(); len(got) != 0 {
					t.Errorf("bob received %v", got)
				}
				alice.ping()
				alice.disconnect()
				tb.waitOffline(id)
				alice = resume(t, tb.addr, persistent(as(v, "alice", id)))
				alice.disconnect()
			})
		}
	}
	if l := tb.logs.Lines("session discarded"); len(l) != 2*len(hostile) {
		t.Errorf("%d discard log lines, want %d", len(l), 2*len(hostile))
	}
}

// TestRemovedUsersSessionsGo: a user removed from the password file loses
// its sessions, at the reload (200 never-expiring ones included) and, for
// sessions restored from the store, at start-up: a squatter's sessions do
// not outlive it.
func TestRemovedUsersSessionsGo(t *testing.T) {
	tb := startBroker(t, setup{acl: squatACL, conf: persistConf})
	bob := connect(t, tb.addr, persistent(as(5, "bob", "device-1")))
	bob.mustSubscribe("public/#")
	bob.disconnect()
	live := connect(t, tb.addr, persistent(as(4, "bob", "device-2")))
	live.mustSubscribe("public/#")
	connect(t, tb.addr, persistent(as(5, "alice", "alice-own"))).disconnect()
	// 200 never-expiring sessions, made 20 at a time.
	const squats = 200
	var wg sync.WaitGroup
	var made atomic.Int32
	errs := make(chan error, squats)
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < squats; i += 20 {
				m := persistent(as(5, "bob", fmt.Sprintf("squat-%d", i))).options()
				m.SessionExpiry = 0xFFFFFFFF
				c, ack, err := mqtttest.Dial(tb.addr, m)
				if err != nil {
					errs <- err
					continue
				}
				// A per-user session limit may refuse some: those
				// hold nothing.
				if ack.ReasonCode == 0 {
					made.Add(1)
				}
				_ = c.Disconnect()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if made.Load() == 0 {
		t.Fatal("no squatting session made")
	}

	without := maps.Clone(passwords)
	delete(without, "bob")
	writePasswd(t, tb.passwd, without)
	if err := tb.b.Reload(); err != nil {
		t.Fatal(err)
	}
	if !live.waitClosed() {
		t.Fatal("removed user still connected")
	}
	for _, id := range []string{"device-1", "device-2"} {
		if !tb.waitNoSession(id) {
			t.Errorf("session %s of a removed user kept", id)
		}
	}
	for i := range squats {
		if !tb.waitNoSession(fmt.Sprintf("squat-%d", i)) {
			t.Fatalf("session squat-%d of a removed user kept", i)
		}
	}
	if u, ok := tb.session("alice-own"); !ok || u != "alice" {
		t.Errorf("alice's session lost: %q %v", u, ok)
	}
	// Others are still served.
	a := connect(t, tb.addr, as(5, "alice", "alice-live"))
	a.mustSubscribe("alice/#")
	a.publish("alice/after", "x", 1, false)
	if !a.waitTopic("alice/after") {
		t.Error("alice not served after the reload")
	}
	a.disconnect()

	// While Moat is down: bob is back and squats, then removed again.
	writePasswd(t, tb.passwd, passwords)
	if err := tb.b.Reload(); err != nil {
		t.Fatal(err)
	}
	connect(t, tb.addr, persistent(as(5, "bob", "device-3"))).disconnect()
	writePasswd(t, tb.passwd, without)
	tb = tb.restart(listenerID)
	if _, ok := tb.session("device-3"); ok {
		t.Error("restored session of a removed user kept at start-up")
	}
	fresh(t, tb.addr, persistent(as(5, "alice", "device-3"))).disconnect()
	resume(t, tb.addr, persistent(as(5, "alice", "alice-own"))).disconnect()
	// And it is gone from the store too.
	tb = tb.restart(listenerID)
	if u, _ := tb.session("device-3"); u == "bob" {
		t.Error("removed user's session back after a second restart")
	}
}

// TestClientIDRace: three users CONNECT at the same moment with one fresh
// client id, 400 times. Exactly one gets it; the others are refused with
// the client-id code; the winner keeps its connection and acts as itself.
func TestClientIDRace(t *testing.T) {
	tb := startBroker(t, setup{acl: squatACL, conf: "ban_threshold 0\n"})
	pub := connect(t, tb.addr, as(5, "admin", "race-pub"))
	const rounds = 400
	for i := range rounds {
		v := byte(4 + i%2)
		id := fmt.Sprintf("race-%d", i)
		users := []string{"alice", "bob", "admin"}
		type result struct {
			c   *mqtttest.Client
			ack byte
			sp  bool
			err error
		}
		res := make([]result, len(users))
		var start, done sync.WaitGroup
		start.Add(1)
		for j, u := range users {
			done.Add(1)
			go func() {
				defer done.Done()
				start.Wait()
				o := as(v, u, id)
				// A quarter of the rounds persistent: a takeover shows as a
				// session present; fewer sessions are left per user.
				o.persist = i%8 < 2
				c, ack, err := mqtttest.Dial(tb.addr, o.options())
				res[j] = result{c: c, ack: ack.ReasonCode, sp: ack.SessionPresent, err: err}
			}()
		}
		start.Done()
		done.Wait()
		var winners []int
		for j, r := range res {
			if r.err != nil {
				t.Fatalf("round %d %s: %v", i, users[j], r.err)
			}
			t.Cleanup(func() { _ = r.c.Close() })
			switch r.ack {
			case 0:
				winners = append(winners, j)
				if r.sp {
					t.Errorf("round %d: %s got a session present for a fresh id", i, users[j])
				}
			case idRefused(v):
			default:
				t.Errorf("round %d: %s got CONNACK 0x%02x, want 0 or 0x%02x", i, users[j], r.ack, idRefused(v))
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d users got client id %s, want exactly 1", i, len(winners), id)
		}
		w := winners[0]
		c := &client{Client: res[w].c, t: t}
		// The winner owns the session and acts as itself: its own topics
		// are granted, the other user's are not.
		if u, _ := tb.session(id); u != users[w] {
			t.Fatalf("round %d: session of %s belongs to %q, want %s", i, id, u, users[w])
		}
		other := users[(w+1)%len(users)]
		codes := c.subscribe(users[w]+"/race", other+"/race", "public/"+id)
		if !slices.Equal(codes, []byte{1, refused(v), 1}) {
			t.Fatalf("round %d: %s got SUBACK %v, want [1 0x%02x 1]", i, users[w], codes, refused(v))
		}
		pub.publish("public/"+id, id, 1, false)
		if !c.waitTopic("public/" + id) {
			t.Fatalf("round %d: winner %s got nothing: %v", i, users[w], c.err())
		}
		c.disconnect()
		for j, r := range res {
			if j == w {
				continue
			}
			r.c.WaitClosed()
			if got := r.c.Topics(); len(got) != 0 {
				t.Fatalf("round %d: refused %s received %v", i, users[j], got)
			}
		}
	}
}

// TestSessionsAfterListenerChange: a session restored from the store
// whose listener is no longer configured still belongs to the one scope
// of all listeners without per_listener_settings; with it, its scope is
// gone and so is the session.
func TestSessionsAfterListenerChange(t *testing.T) {
	for _, perListener := range []bool{false, true} {
		t.Run(fmt.Sprintf("per_listener_settings %v", perListener), func(t *testing.T) {
			dir := t.TempDir()
			conf := perListenerConf(t, dir, true)
			if !perListener {
				conf, _, _ = writeSetup(t, dir, setup{acl: tableBACL, conf: persistConf + "listener 0 127.0.0.1\nprotocol websockets\n"})
			}
			tb := startConf(t, dir, conf, listenerID)
			alice := connect(t, tb.addr, persistent(as(5, "alice", "moving")))
			alice.mustSubscribe("alice/#")
			alice.disconnect()
			tb.waitOffline("moving")
			connect(t, tb.addr, as(5, "alice", "moving-pub")).publish("alice/queued", "x", 1, false)

			// The TCP listener becomes a Unix socket: its id changes.
			b, err := os.ReadFile(conf)
			if err != nil {
				t.Fatal(err)
			}
			moved := strings.Replace(string(b), "listener 0 127.0.0.1\n", "listener 0 "+filepath.Join(dir, "moat.sock")+"\n", 1)
			writeFile(t, conf, moved)
			tb = tb.restart(wsListenerID)
			if perListener {
				if _, ok := tb.session("moving"); ok {
					t.Fatal("session of a listener no longer configured kept")
				}
				return
			}
			c, ack := dialWS(t, tb, persistent(as(5, "alice", "moving")))
			if ack.code != 0 || !ack.present {
				t.Fatalf("CONNACK 0x%02x session present %v, want 0 and true", ack.code, ack.present)
			}
			if !c.waitTopic("alice/queued") {
				t.Errorf("queued message missing: %v", c.topics())
			}
		})
	}
}
