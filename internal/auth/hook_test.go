package auth

import (
	"log/slog"
	"net"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// The per-delivery check runs for every message and subscriber: it must
// not allocate.
func TestDeliveryCheckDoesNotAllocate(t *testing.T) {
	rules, _, err := acl.Parse("acl", []byte("pattern readwrite %u/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	h := New(Options{Server: srv, Policy: &Policy{Default: &Scope{ACL: rules}, StrictSubscribe: true}})
	cl := srv.NewClient(nil, "l1", "client-1", false)
	cl.Properties.Username = []byte("alice")
	h.ids.Store(cl.ID, &identity{client: acl.Client{Username: "alice", HasUsername: true, ClientID: cl.ID}, listener: "l1", owner: cl})
	for _, tc := range []struct {
		topic string
		want  bool
	}{{"alice/sensors/temp", true}, {"bob/sensors/temp", false}, {"$SYS/broker/uptime", false}} {
		if got := h.OnACLCheck(cl, tc.topic, false); got != tc.want {
			t.Fatalf("OnACLCheck(%s) = %v", tc.topic, got)
		}
		if n := testing.AllocsPerRun(200, func() { h.OnACLCheck(cl, tc.topic, false) }); n != 0 {
			t.Errorf("OnACLCheck(%s) allocates %.1f times per call", tc.topic, n)
		}
	}
}

func BenchmarkDeliveryCheck(b *testing.B) {
	rules, _, _ := acl.Parse("acl", []byte("pattern readwrite %u/#\n"))
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	h := New(Options{Server: srv, Policy: &Policy{Default: &Scope{ACL: rules}}})
	cl := srv.NewClient(nil, "l1", "client-1", false)
	h.ids.Store(cl.ID, &identity{client: acl.Client{Username: "alice", HasUsername: true, ClientID: cl.ID}, listener: "l1"})
	b.ReportAllocs()
	for b.Loop() {
		h.OnACLCheck(cl, "alice/sensors/temp", false)
	}
}

// A client reconnecting with the same id can be approved before mochi has
// cleaned up the old connection; that clean-up must keep the new identity.
func TestOldSessionCleanupKeepsNewIdentity(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("pattern readwrite %u/#\n"))
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	h := New(Options{Server: srv, Policy: &Policy{Default: &Scope{ACL: rules, Passwd: testPasswd(t, "alice")}}})
	// Connected clients: a session without a connection is a restored one.
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	old := srv.NewClient(c1, "l1", "same-id", false)
	cur := srv.NewClient(c2, "l1", "same-id", false)
	for _, cl := range []*mqtt.Client{old, cur} {
		cl.Properties.Username = []byte("alice")
	}
	h.approve(cur, testIdentity(t, h, "alice", "same-id", "l1", cur))
	if !h.OnConnectAuthenticate(cur, packets.Packet{}) {
		t.Fatal("approved connection refused")
	}
	h.OnDisconnect(old, nil, true)
	if !h.OnACLCheck(cur, "alice/x", true) {
		t.Fatal("the old connection's clean-up removed the new connection's identity")
	}
	if h.OnConnectAuthenticate(old, packets.Packet{}) {
		t.Fatal("the old connection is still approved")
	}
	h.OnDisconnect(cur, nil, true)
	if h.OnACLCheck(cur, "alice/x", false) {
		t.Fatal("identity kept after its own clean-up")
	}
}

// A persistent session restored from the store (no connection) is checked
// under its stored identity, so messages for it keep being queued; a user
// no longer in the password file gets nothing.
func TestRestoredSessionKeepsItsIdentity(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("pattern readwrite %u/#\n"))
	h1, err := passwd.Hash([]byte("pw"), "sha512-pbkdf2", 10)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := passwd.Parse("passwd", []byte("alice:"+h1+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	h := New(Options{Server: srv, Policy: &Policy{Default: &Scope{ACL: rules, Passwd: pf}}})
	for _, tc := range []struct {
		user string
		want bool
	}{{"alice", true}, {"mallory", false}} {
		cl := srv.NewClient(nil, "l1", "restored-"+tc.user, false)
		cl.Properties.Username = []byte(tc.user)
		if got := h.OnACLCheck(cl, tc.user+"/x", false); got != tc.want {
			t.Fatalf("restored session of %s: delivery allowed %v", tc.user, got)
		}
		if h.OnACLCheck(cl, "bob/x", false) {
			t.Fatalf("restored session of %s reads bob's topics", tc.user)
		}
	}
}
