package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/moat-mqtt/moat/internal/cluster"
	"github.com/moat-mqtt/moat/internal/cluster/natstest"
)

const waitLong = 15 * time.Second

// node is a backplane with what it received.
type node struct {
	bp       *cluster.Backplane
	mu       sync.Mutex
	got      []*cluster.Message
	retained map[string]string
}

func start(t *testing.T, nc *natstest.Cluster, name string) *node {
	t.Helper()
	n := &node{retained: map[string]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	bp, err := cluster.Start(ctx, cluster.Options{
		URLs: strings.Split(nc.URLs(), ","), Name: "test", Node: name, Replicas: len(nc.Nodes),
		PublishTimeout: 2 * time.Second,
		Deliver: func(m *cluster.Message) {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.got = append(n.got, m)
		},
		Retained: func(m *cluster.Message) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if len(m.Payload) == 0 {
				delete(n.retained, m.Topic)
			} else {
				n.retained[m.Topic] = string(m.Payload)
			}
		},
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(bp.Close)
	n.bp = bp
	return n
}

// topics lists the topics received for ordinary subscriptions.
func (n *node) topics() []string { return n.received("") }

// received lists the topics received for the shared subscription shared
// ("" : ordinary ones).
func (n *node) received(shared string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, m := range n.got {
		if m.Shared == shared {
			out = append(out, m.Topic)
		}
	}
	return out
}

func (n *node) waitFor(t *testing.T, count int) []string {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		got := n.topics()
		if len(got) >= count || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (n *node) retainedValue(topic string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.retained[topic]
	return v, ok
}

func publish(t *testing.T, n *node, m *cluster.Message) {
	t.Helper()
	if err := n.bp.Publish(context.Background(), m); err != nil {
		t.Fatalf("publish %q: %v", m.Topic, err)
	}
}

// Interest-based routing: a node receives what its filters match, once
// even when several overlap, never its own, and nothing after the last
// owner of a filter is gone.
func TestInterestRouting(t *testing.T) {
	nc := natstest.Start(t, 3)
	a, b := start(t, nc, "a"), start(t, nc, "b")
	for _, f := range []string{"s/+", "s/#", "s/x", "$share/g/s/x"} {
		if err := b.bp.Subscribe("c1", f); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.bp.Subscribe("c2", "s/#"); err != nil {
		t.Fatal(err)
	}
	if err := a.bp.Subscribe("c3", "s/#"); err != nil {
		t.Fatal(err)
	}
	// Subscriptions reach the server before the publications.
	if err := nc.Connect().Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	hostile := []string{"s/x", "s", "s/a.b", "s/*", "s/>", "s/ ", "s//", "other/x", "$SYS/x", "s/" + strings.Repeat("\"ip=\x01", 100)}
	for i, topic := range hostile {
		publish(t, a, &cluster.Message{Topic: topic, Payload: []byte(fmt.Sprint(i)), QoS: byte(i % 2), Origin: "pub"})
	}
	want := []string{"s/x", "s", "s/a.b", "s/*", "s/>", "s/ ", "s//", hostile[len(hostile)-1]}
	got := b.waitFor(t, len(want))
	time.Sleep(200 * time.Millisecond)
	got = b.topics()
	if !slices.Equal(got, want) {
		t.Fatalf("b received %q\nwant %q", got, want)
	}
	if own := a.topics(); len(own) != 0 {
		t.Fatalf("a received its own publications: %q", own)
	}
	// The shared subscription gets its own copy, once, for its queue group.
	if sh := b.received("$share/g/s/x"); !slices.Equal(sh, []string{"s/x"}) {
		t.Fatalf("shared subscription received %q", sh)
	}
	b.mu.Lock()
	m := b.got[0]
	b.mu.Unlock()
	if m.Origin != "pub" || m.Node != "a" || string(m.Payload) != "0" {
		t.Fatalf("message = %+v", m)
	}
	// c1 leaves s/# but c2 still holds it: still delivered.
	b.bp.Unsubscribe("c1", "s/#")
	b.bp.Unsubscribe("c1", "s/#")
	publish(t, a, &cluster.Message{Topic: "s/y/z", Payload: []byte("deep")})
	if got := b.waitFor(t, len(want)+1); len(got) != len(want)+1 || got[len(got)-1] != "s/y/z" {
		t.Fatalf("after c1 left s/#: %q", got)
	}
	for _, f := range []string{"s/+", "s/x", "$share/g/s/x"} {
		b.bp.Unsubscribe("c1", f)
	}
	b.bp.Unsubscribe("c2", "s/#")
	if in := b.bp.Interest(); len(in) != 0 {
		t.Fatalf("interest left after every unsubscribe: %q", in)
	}
	publish(t, a, &cluster.Message{Topic: "s/x", Payload: []byte("late")})
	time.Sleep(300 * time.Millisecond)
	if got := b.topics(); len(got) != len(want)+1 {
		t.Fatalf("b received after unsubscribing: %q", got)
	}
}

// 200 owners subscribing and unsubscribing the same filters at once leave
// exactly the interest that remains.
func TestInterestConcurrent(t *testing.T) {
	nc := natstest.Start(t, 1)
	b := start(t, nc, "b")
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprint("c", i)
			for _, f := range []string{"a/#", "a/+", "b"} {
				if err := b.bp.Subscribe(owner, f); err != nil {
					t.Error(err)
				}
			}
			if i%2 == 0 {
				b.bp.Unsubscribe(owner, "a/#")
				b.bp.Unsubscribe(owner, "a/+")
				b.bp.Unsubscribe(owner, "b")
			}
		}()
	}
	wg.Wait()
	in := b.bp.Interest()
	slices.Sort(in)
	want := []string{"moat.test.*.a", "moat.test.*.a.*", "moat.test.*.a.>", "moat.test.*.b"}
	if !slices.Equal(in, want) {
		t.Fatalf("interest = %q, want %q", in, want)
	}
}

// QoS 1 publications are in the replicated stream when Publish returns.
func TestQoS1InStream(t *testing.T) {
	nc := natstest.Start(t, 3)
	a := start(t, nc, "a")
	for i := range 20 {
		publish(t, a, &cluster.Message{Topic: "q/" + fmt.Sprint(i), QoS: 1, Payload: []byte("x")})
	}
	publish(t, a, &cluster.Message{Topic: "q0", QoS: 0, Payload: []byte("x")})
	js, err := jetstream.New(nc.Connect())
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), "MOAT_test")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 20 || info.Config.Replicas != 3 {
		t.Fatalf("stream holds %d messages at R%d, want 20 at R3", info.State.Msgs, info.Config.Replicas)
	}
}

// Retained set, replace and clear on one node reach the others, and a
// node started later catches up before Start returns.
func TestRetainedAcrossNodes(t *testing.T) {
	nc := natstest.Start(t, 3)
	a, b := start(t, nc, "a"), start(t, nc, "b")
	publish(t, a, &cluster.Message{Topic: "r/1", Retain: true, Payload: []byte("v1"), QoS: 1})
	publish(t, a, &cluster.Message{Topic: "r/1", Retain: true, Payload: []byte("v2"), QoS: 1})
	publish(t, a, &cluster.Message{Topic: "r/2", Retain: true, Payload: []byte("gone")})
	publish(t, b, &cluster.Message{Topic: "r/2", Retain: true, Payload: nil})
	publish(t, b, &cluster.Message{Topic: "r/a.b", Retain: true, Payload: []byte("dots")})
	deadline := time.Now().Add(waitLong)
	for {
		v1, ok1 := b.retainedValue("r/1")
		_, ok2 := b.retainedValue("r/2")
		v3, _ := a.retainedValue("r/a.b")
		if ok1 && v1 == "v2" && !ok2 && v3 == "dots" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retained not in step: b r/1=%q r/2 present=%v, a r/a.b=%q", v1, ok2, v3)
		}
		time.Sleep(10 * time.Millisecond)
	}
	late := start(t, nc, "late")
	v1, ok1 := late.retainedValue("r/1")
	_, ok2 := late.retainedValue("r/2")
	v3, _ := late.retainedValue("r/a.b")
	if v1 != "v2" || !ok1 || ok2 || v3 != "dots" {
		t.Fatalf("late node did not catch up before Start returned: r/1=%q r/2 present=%v r/a.b=%q", v1, ok2, v3)
	}
}

// With NATS gone, QoS 1 is refused at once with ErrUnavailable and the
// state says so; the node reconnects when NATS is back.
func TestUnavailable(t *testing.T) {
	nc := natstest.Start(t, 1)
	a := start(t, nc, "a")
	if err := a.bp.Check(context.Background()); err != nil {
		t.Fatalf("check while connected: %v", err)
	}
	nc.Shutdown(0)
	deadline := time.Now().Add(waitLong)
	for a.bp.Check(context.Background()) == nil {
		if time.Now().After(deadline) {
			t.Fatal("backplane still reports connected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 200 {
		err := a.bp.Publish(context.Background(), &cluster.Message{Topic: "x", QoS: 1, Payload: []byte("p")})
		if !errors.Is(err, cluster.ErrUnavailable) {
			t.Fatalf("publish with NATS down: %v, want ErrUnavailable", err)
		}
	}
	if s := a.bp.Stats(); s.Connected || s.Refused < 200 {
		t.Fatalf("stats = %+v", s)
	}
	nc.Restart(0)
	deadline = time.Now().Add(waitLong)
	for a.bp.Check(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("backplane did not reconnect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	publish(t, a, &cluster.Message{Topic: "x", QoS: 1, Payload: []byte("p")})
}

// Client id claims: the owner is known across nodes, a newer claim wins,
// a released id is free, and the claims of a node that stopped without
// releasing them lapse.
func TestClientIDClaims(t *testing.T) {
	nc := natstest.Start(t, 1)
	ctx := context.Background()
	var mu sync.Mutex
	taken := map[string]string{}
	startWith := func(name string) *cluster.Backplane {
		bp, err := cluster.Start(ctx, cluster.Options{
			URLs: []string{nc.URL(0)}, Name: "test", Node: name, Replicas: 1, StaleAfter: 2 * time.Second,
			TakeOver: func(id, node string) {
				mu.Lock()
				defer mu.Unlock()
				taken[name+":"+id] = node
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return bp
	}
	a, b := startWith("a"), startWith("b")
	defer b.Close()
	if err := a.Claim(ctx, "dev/1 \"x\"", "alice"); err != nil {
		t.Fatal(err)
	}
	if o, ok, err := b.Owner(ctx, "dev/1 \"x\""); err != nil || !ok || o.Node != "a" || o.User != "alice" {
		t.Fatalf("owner seen from b = %+v %v %v", o, ok, err)
	}
	if err := b.Claim(ctx, "dev/1 \"x\"", "alice"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitLong)
	for {
		mu.Lock()
		node := taken["a:dev/1 \"x\""]
		mu.Unlock()
		if node == "b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node a was not told of b's claim")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// a's stale release does not remove b's newer claim.
	a.Release(ctx, "dev/1 \"x\"")
	if o, ok, _ := a.Owner(ctx, "dev/1 \"x\""); !ok || o.Node != "b" {
		t.Fatalf("owner after a's release = %+v %v", o, ok)
	}
	b.Release(ctx, "dev/1 \"x\"")
	if _, ok, _ := a.Owner(ctx, "dev/1 \"x\""); ok {
		t.Fatal("id still owned after b released it")
	}
	// a claims and stops without releasing: the claim lapses.
	if err := a.Claim(ctx, "dev/2", "bob"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if _, ok, _ := b.Owner(ctx, "dev/2"); !ok {
		t.Fatal("a's claim not seen right after it stopped")
	}
	deadline = time.Now().Add(waitLong)
	for {
		if _, ok, _ := b.Owner(ctx, "dev/2"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the claim of a stopped node never lapsed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
