package auth

import (
	"log/slog"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// testPasswd is a password file with users whose password is "pw".
func testPasswd(t *testing.T, users ...string) *passwd.File {
	t.Helper()
	var b []byte
	for _, u := range users {
		hash, err := passwd.Hash([]byte("pw"), "sha512-pbkdf2", 10)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, u+":"+hash+"\n"...)
	}
	pf, err := passwd.Parse("passwd", b)
	if err != nil {
		t.Fatal(err)
	}
	return pf
}

// testIdentity is what OnConnect approves for user on listener.
func testIdentity(t *testing.T, h *Hook, user, id, listener string, cl *mqtt.Client) *identity {
	t.Helper()
	fp, ok := h.policy.Load().scope(listener).Passwd.Fingerprint(user)
	if !ok {
		t.Fatalf("no user %s", user)
	}
	return &identity{client: acl.Client{Username: user, HasUsername: true, ClientID: id}, listener: listener, fingerprint: fp, owner: cl}
}

type recordingStore struct {
	expired []string
	dropped []uint16
}

func (r *recordingStore) OnClientExpired(cl *mqtt.Client) { r.expired = append(r.expired, cl.ID) }
func (r *recordingStore) OnQosDropped(_ *mqtt.Client, pk packets.Packet) {
	r.dropped = append(r.dropped, pk.PacketID)
}

func newSessionHook(t *testing.T, scopes map[string]*Scope) (*Hook, *mqtt.Server, *recordingStore) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	h := New(Options{Server: srv, Policy: &Policy{Scopes: scopes, Default: &Scope{}}})
	st := &recordingStore{}
	h.SetSessionStore(st)
	return h, srv, st
}

func offlineSession(srv *mqtt.Server, listener, id, user string) *mqtt.Client {
	cl := srv.NewClient(nil, listener, id, false)
	cl.Properties.Username = []byte(user)
	cl.Properties.ProtocolVersion = 5
	cl.Stop(nil)
	srv.Clients.Add(cl)
	return cl
}

func TestClaimOfOneClientID(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("pattern readwrite %u/#\npattern read public/#\n"))
	global := &Scope{ACL: rules, Passwd: testPasswd(t, "alice", "bob")}
	other := &Scope{ACL: rules, Passwd: testPasswd(t, "alice", "bob")}
	for _, tc := range []struct {
		name           string
		user, listener string // the newcomer's
		offline        bool   // the existing session is offline, else only claimed
		want           bool
	}{
		{"other user, claim pending", "bob", "l1", false, false},
		{"same user, claim pending", "alice", "l2", false, true},
		{"other scope, claim pending", "alice", "l3", false, false},
		{"other user, offline session", "bob", "l1", true, true},
		{"other scope, offline session", "alice", "l3", true, true},
		{"same user, offline session", "alice", "l1", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, srv, st := newSessionHook(t, map[string]*Scope{"l1": global, "l2": global, "l3": other})
			const id = "device"
			if tc.offline {
				ex := offlineSession(srv, "l1", id, "alice")
				ex.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "public/x", PacketID: 7})
			} else {
				first := srv.NewClient(nil, "l1", id, false)
				first.Properties.Username = []byte("alice")
				h.approve(first, testIdentity(t, h, "alice", id, "l1", first))
				if !h.OnConnectAuthenticate(first, packets.Packet{}) {
					t.Fatal("first claim refused")
				}
			}
			cl := srv.NewClient(nil, tc.listener, id, false)
			cl.Properties.Username = []byte(tc.user)
			h.approve(cl, testIdentity(t, h, tc.user, id, tc.listener, cl))
			if got := h.OnConnectAuthenticate(cl, packets.Packet{}); got != tc.want {
				t.Fatalf("claim = %v, want %v", got, tc.want)
			}
			ex, held := srv.Clients.Get(id)
			discard := tc.offline && (tc.user != "alice" || tc.listener == "l3")
			switch {
			case discard && held:
				t.Errorf("offline session of another owner kept (user %s)", ex.Properties.Username)
			case discard && (len(st.expired) != 1 || ex != nil && ex.State.Inflight.Len() != 0):
				t.Errorf("store not told: %v", st.expired)
			case !discard && tc.offline && !held:
				t.Error("own offline session discarded")
			}
		})
	}
}

func TestQueuedMessagesDroppedWhenUnreadable(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("user alice\ntopic read news/#\n"))
	h, srv, st := newSessionHook(t, map[string]*Scope{"l1": {ACL: rules, Passwd: testPasswd(t, "alice")}})
	ex := offlineSession(srv, "l1", "device", "alice")
	for i, topic := range []string{"news/1", "secret/1", "news/2"} {
		ex.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: topic, PacketID: uint16(i + 1)})
	}
	// An inbound QoS 2 record is not a delivery.
	ex.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 9})
	h.PruneSessions()
	if got := ex.State.Inflight.Len(); got != 3 {
		t.Errorf("%d in flight after prune, want 3", got)
	}
	if len(st.dropped) != 1 || st.dropped[0] != 2 {
		t.Errorf("store told of %v, want [2]", st.dropped)
	}
}

func TestPruneRemovesSessionsOfRemovedUsers(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("pattern readwrite %u/#\n"))
	h, srv, st := newSessionHook(t, map[string]*Scope{"l1": {ACL: rules, Passwd: testPasswd(t, "alice")}})
	offlineSession(srv, "l1", "a", "alice")
	offlineSession(srv, "l1", "m", "mallory")
	offlineSession(srv, "gone-listener", "g", "alice")
	offlineSession(srv, "l1", "anon", "")
	h.PruneSessions()
	for id, want := range map[string]bool{"a": true, "m": false, "g": false, "anon": false} {
		if _, ok := srv.Clients.Get(id); ok != want {
			t.Errorf("session %s kept = %v, want %v", id, ok, want)
		}
	}
	if len(st.expired) != 3 {
		t.Errorf("store told of %v, want 3 sessions", st.expired)
	}
}

// The delivery guard makes mochi's writer refuse a PUBLISH the policy in
// force denies (MaxSize 1) and drops its in-flight record.
func TestDeliveryGuard(t *testing.T) {
	rules, _, _ := acl.Parse("acl", []byte("user alice\ntopic read news/#\n"))
	h, srv, st := newSessionHook(t, map[string]*Scope{"l1": {ACL: rules, Passwd: testPasswd(t, "alice")}})
	cl := srv.NewClient(nil, "l1", "device", false)
	cl.Properties.Username = []byte("alice")
	h.approve(cl, testIdentity(t, h, "alice", "device", "l1", cl))
	if !h.OnConnectAuthenticate(cl, packets.Packet{}) {
		t.Fatal("refused")
	}
	g := h.DeliveryGuard().(*deliveryGuard)
	for _, tc := range []struct {
		topic string
		want  bool
	}{{"news/1", true}, {"secret/1", false}, {"$SYS/x", false}} {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: tc.topic, PacketID: 5}
		cl.State.Inflight.Set(pk)
		out := g.OnPacketEncode(cl, pk)
		if got := out.Mods.MaxSize != 1; got != tc.want {
			t.Errorf("%s written = %v, want %v", tc.topic, got, tc.want)
		}
		if _, inflight := cl.State.Inflight.Get(5); inflight != tc.want {
			t.Errorf("%s in flight = %v, want %v", tc.topic, inflight, tc.want)
		}
		cl.State.Inflight.Delete(5)
	}
	if len(st.dropped) != 2 {
		t.Errorf("store told of %v, want 2 drops", st.dropped)
	}
	// Other packets pass untouched.
	if out := g.OnPacketEncode(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Suback}}); out.Mods.MaxSize != 0 {
		t.Error("SUBACK touched")
	}
}
