package broker_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/moat-mqtt/moat/internal/moattest"
)

// One user's offline sessions hold at most max_queued_messages_per_user
// messages and each at most max_queued_bytes, also when 20 publishers send
// at once; what is over is not queued and is counted; another user's
// session is not touched.
func TestOfflineQueuesBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_queued_messages_per_user 10\nmax_queued_bytes 4000\n"})
	for _, id := range []string{"alice-q1", "alice-q2"} {
		o := as(5, "alice", id)
		o.persist = true
		c := connect(t, tb.addr, o)
		c.mustSubscribe("alice/count/#")
		c.disconnect()
		tb.waitOffline(id)
	}
	ob := as(5, "bob", "bob-q")
	ob.persist = true
	bob := connect(t, tb.addr, ob)
	bob.mustSubscribe("bob/#")
	bob.disconnect()
	tb.waitOffline("bob-q")

	var wg sync.WaitGroup
	for p := range 20 {
		wg.Go(func() {
			c := connect(t, tb.addr, as(5, "alice", fmt.Sprintf("alice-pub-%d", p)))
			for i := range 10 {
				c.publish(fmt.Sprintf("alice/count/%d/%d", p, i), "x", 1, false)
			}
			c.disconnect()
		})
	}
	wg.Wait()
	pub := connect(t, tb.addr, as(5, "bob", "bob-pub"))
	for i := range 5 {
		pub.publish(fmt.Sprintf("bob/%d", i), "x", 1, false)
	}
	queued := func(id string) int {
		cl, ok := tb.b.Server().Clients.Get(id)
		if !ok {
			return -1
		}
		return cl.State.Inflight.Len()
	}
	moattest.Eventually(t, waitLong, "bob's 5 queued", func() bool { return queued("bob-q") == 5 })
	n := queued("alice-q1") + queued("alice-q2")
	t.Logf("200 concurrent publishes to alice's 2 offline sessions: %d queued (limit 10 per user)", n)
	if n < 10 || n > 10+20 { // each publisher may pass the check once before the count catches up
		t.Errorf("alice's offline sessions hold %d messages, want 10 (a few more under concurrency)", n)
	}

	// Bytes: a session of another user, big payloads.
	oc := as(5, "admin", "admin-q")
	oc.persist = true
	c := connect(t, tb.addr, oc)
	c.mustSubscribe("admin/#")
	c.disconnect()
	tb.waitOffline("admin-q")
	apub := connect(t, tb.addr, as(5, "admin", "admin-pub"))
	for i := range 8 {
		apub.publish(fmt.Sprintf("admin/%d", i), strings.Repeat("b", 1000), 1, false)
	}
	if got := queued("admin-q"); got != 4 {
		t.Errorf("admin's session holds %d messages of 1 KiB, want 4 (max_queued_bytes 4000)", got)
	}
	mf := metricFamilies(t, tb)
	seen := map[string]float64{}
	for _, m := range mf["moat_limit_refusals_total"].GetMetric() {
		seen[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	if seen["max_queued_messages_per_user"] == 0 || seen["max_queued_bytes"] == 0 {
		t.Errorf("refusals not counted: %v", seen)
	}
	// The sessions resume with what was queued.
	o := as(5, "alice", "alice-q1")
	o.persist = true
	want := queued("alice-q1")
	back := connect(t, tb.addr, o)
	back.publish("alice/count/end", "m", 1, false)
	if !back.waitTopic("alice/count/end") {
		t.Fatal("marker not delivered")
	}
	if got := len(without(back.topics(), "alice/count/end")); got != want {
		t.Errorf("resumed session got %d queued messages, want %d", got, want)
	}
}
