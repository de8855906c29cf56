package broker_test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/cluster/natstest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// TestBenchCluster prints the cluster's figures (scripts/bench-cluster.sh);
// it asserts nothing about speed and runs only with MOAT_BENCH_CLUSTER=1.
// Everything runs in this one process: the three NATS nodes, the Moat
// nodes and the clients share its CPU time.
func TestBenchCluster(t *testing.T) {
	if os.Getenv("MOAT_BENCH_CLUSTER") == "" {
		t.Skip("benchmark: run scripts/bench-cluster.sh (MOAT_BENCH_CLUSTER=1)")
	}
	n := 2000
	if os.Getenv("QUICK") != "" {
		n = 300
	}
	nc := natstest.Start(t, 3)
	s := setup{acl: "user alice\ntopic readwrite #\n"}
	single := startBroker(t, s)
	nodes := startNodes(t, nc, s, "a", "b")
	fmt.Printf("bench-cluster: %d CPUs, GOMAXPROCS %d, %d messages per latency run; NATS: 3 in-process nodes\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), n)
	for _, q := range []byte{0, 1} {
		p50, p99 := latency(t, single.addr, single.addr, q, n, fmt.Sprint("one", q))
		fmt.Printf("one node,  QoS %d: publish->delivery p50 %v  p99 %v\n", q, p50, p99)
		p50, p99 = latency(t, nodes[0].addr, nodes[1].addr, q, n, fmt.Sprint("two", q))
		fmt.Printf("two nodes, QoS %d: publish->delivery p50 %v  p99 %v (publisher on A, subscriber on B)\n", q, p50, p99)
	}
	for _, q := range []byte{0, 1} {
		d, cpu := fanout(t, single.addr, single.addr, q, 10*n, fmt.Sprint("f1", q))
		fmt.Printf("one node,  QoS %d fan-out x10: %d of %d deliveries, %.0f deliveries per CPU-second\n", q, d, 10*n, float64(d)/cpu)
		d, cpu = fanout(t, nodes[0].addr, nodes[1].addr, q, 10*n, fmt.Sprint("f2", q))
		fmt.Printf("two nodes, QoS %d fan-out x10: %d of %d deliveries, %.0f deliveries per CPU-second (whole process)\n", q, d, 10*n, float64(d)/cpu)
	}
	conns := 1000
	if os.Getenv("QUICK") != "" {
		conns = 200
	}
	before := heap()
	for i := range conns {
		for j, nd := range nodes {
			c := connect(t, nd.addr, as(4, "alice", fmt.Sprintf("idle-%d-%d", j, i)))
			c.mustSubscribe(fmt.Sprintf("idle/%d/%d", j, i))
		}
	}
	after := heap()
	fmt.Printf("two nodes: %d connections each, one subscription each (a NATS subject each): %.1f KiB heap per connection (Moat, NATS and clients in one process)\n",
		conns, float64(after-before)/float64(2*conns)/1024)
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// latency publishes n messages one at a time and measures each until the
// subscriber has it.
func latency(t *testing.T, pubAddr, subAddr string, q byte, n int, id string) (p50, p99 time.Duration) {
	pub := connect(t, pubAddr, as(5, "alice", "pub-"+id))
	sub := connect(t, subAddr, as(5, "alice", "sub-"+id))
	sub.MustSubscribe(t, q, id+"/#")
	waitRouted(t, pub, sub, id+"/probe")
	base := len(sub.topics())
	ds := make([]time.Duration, 0, n)
	for i := range n {
		start := time.Now()
		if q == 0 {
			if err := pub.SendPublish(id+"/m", []byte("x"), 0, false, 0); err != nil {
				t.Fatal(err)
			}
		} else if err := pub.SendPublish(id+"/m", []byte("x"), 1, false, pub.NextID()); err != nil {
			t.Fatal(err)
		}
		want := base + i + 1
		if !sub.WaitUntil(waitLong, func(s mqtttest.State) bool { return len(s.Messages) >= want }) {
			t.Fatalf("message %d not delivered", i)
		}
		ds = append(ds, time.Since(start))
	}
	pub.disconnect()
	sub.disconnect()
	slices.Sort(ds)
	return ds[len(ds)/2].Round(time.Microsecond), ds[len(ds)*99/100].Round(time.Microsecond)
}

// fanout sends m/10 messages to 10 subscribers and returns the deliveries
// and the process CPU seconds they took.
func fanout(t *testing.T, pubAddr, subAddr string, q byte, m int, id string) (int, float64) {
	pub := connect(t, pubAddr, as(5, "alice", "pub-"+id))
	var subs []*client
	for i := range 10 {
		c := connect(t, subAddr, as(5, "alice", fmt.Sprint("sub-", id, "-", i)))
		c.MustSubscribe(t, q, id+"/#")
		waitRouted(t, pub, c, id+"/probe")
		subs = append(subs, c)
	}
	msgs := m / 10
	cpu0 := cpuSeconds(t)
	go func() {
		for range msgs {
			var pid uint16
			if q > 0 {
				pid = pub.NextID()
			}
			if err := pub.SendPublish(id+"/m", []byte("0123456789abcdef"), q, false, pid); err != nil {
				return
			}
		}
	}()
	total := 0
	// One deadline for all: QoS 0 may be dropped under load, and what
	// did not arrive is reported, not waited for.
	deadline := time.Now().Add(3 * waitLong)
	for _, c := range subs {
		for countTopic(c, id+"/m") < msgs && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		total += countTopic(c, id+"/m")
	}
	return total, cpuSeconds(t) - cpu0
}
