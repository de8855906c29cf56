package broker_test

import (
	"bufio"
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	dto "github.com/prometheus/client_model/go"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/memlimit"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// startAdmit is startBroker with a memory admission threshold.
func startAdmit(t *testing.T, s setup, admit int64) *testBroker {
	t.Helper()
	dir := t.TempDir()
	conf, pw, aclPath := writeSetup(t, dir, s)
	cfg, err := config.Load(conf, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	lg, err := logging.New(logging.Options{Types: map[string]bool{"all": true}, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg, Logger: lg.Logger, MemoryAdmit: admit})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		_ = b.Close(ctx)
	})
	return &testBroker{t: t, dir: dir, conf: conf, passwd: pw, acl: aclPath, b: b, addr: b.Addr(listenerID).String(), logs: logs}
}

func counterValue(t *testing.T, tb *testBroker, name string, labels ...string) float64 {
	t.Helper()
	mf := metricFamilies(t, tb)[name]
	if mf == nil {
		t.Fatalf("no metric %s", name)
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		if !hasLabels(m, labels...) {
			continue
		}
		if c := m.GetCounter(); c != nil {
			sum += c.GetValue()
		} else if g := m.GetGauge(); g != nil {
			sum += g.GetValue()
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, kv ...string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			found = found || (l.GetName() == kv[i] && l.GetValue() == kv[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// liveMemory is what the broker judges admission on.
func liveMemory() int64 {
	runtime.GC()
	return memlimit.NewUsage().Bytes()
}

// Past the memory limit new connections are refused with a clear code
// (MQTT 5 0x97 quota exceeded, 3.1.1 3 server unavailable), counted and
// logged a few times only; connected clients keep being served, and once
// memory is freed connections are admitted again.
func TestMemoryLimitRefusesNewConnections(t *testing.T) {
	admit := liveMemory() + 96<<20
	tb := startAdmit(t, setup{acl: tableBACL}, admit)
	sub := connect(t, tb.addr, as(5, "alice", "before-sub"))
	sub.mustSubscribe("alice/#")
	pub := connect(t, tb.addr, as(4, "alice", "before-pub"))

	ballast := make([][]byte, 160) // 160 MiB of live data: over the limit
	for i := range ballast {
		ballast[i] = make([]byte, 1<<20)
		ballast[i][0] = 1
	}
	runtime.GC()

	var wg sync.WaitGroup
	codes := make([]byte, 200)
	for i := range codes {
		wg.Go(func() {
			v := byte(4 + i%2)
			c, ack := dial(t, tb.addr, as(v, "alice", fmt.Sprintf("storm-%d", i)))
			codes[i] = ack.ReasonCode
			if ack.FixedHeader.Type != packets.Connack {
				codes[i] = 0xff
			}
			c.drop()
		})
	}
	wg.Wait()
	for i, code := range codes {
		want := byte(3)
		if i%2 == 1 {
			want = 0x97
		}
		if code != want {
			t.Fatalf("client %d (v%d): CONNACK 0x%02x, want 0x%02x", i, 4+i%2, code, want)
		}
	}
	// Connected clients are still served.
	if a := pub.publish("alice/still", "x", 1, false); a.code != 0 {
		t.Fatalf("publish during refusal: 0x%02x", a.code)
	}
	if !sub.waitTopic("alice/still") {
		t.Fatal("subscriber not served during refusal")
	}
	if n := counterValue(t, tb, "moat_connections_refused_total", "limit", "memory_limit"); n != 200 {
		t.Fatalf("refusals counted %v, want 200", n)
	}
	if got := counterValue(t, tb, "moat_memory_limit_bytes"); got != float64(admit) {
		t.Fatalf("moat_memory_limit_bytes %v, want %d", got, admit)
	}
	if lines := tb.logs.Lines("connection refused: memory limit reached"); len(lines) == 0 || len(lines) > 10 {
		t.Fatalf("%d refusal log lines for 200 refusals", len(lines))
	}
	runtime.KeepAlive(ballast)

	ballast = nil
	runtime.GC()
	deadline := time.Now().Add(waitLong)
	for {
		c, ack := dial(t, tb.addr, as(5, "alice", "after"))
		if ack.ReasonCode == 0 {
			break
		}
		c.drop()
		if time.Now().After(deadline) {
			t.Fatalf("still refused after the memory was freed: 0x%02x", ack.ReasonCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A subscriber that stops reading holds at most max_queued_messages
// messages in the broker; the rest are dropped, counted, and logged a few
// times only, and other subscribers keep getting every message.
func TestQueueBoundedByMaxQueuedMessages(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_queued_messages 64\n"})
	stalled := rawConn(t, tb.addr, "", 4, true)
	var sub []byte
	{
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "alice/flood"}}}
		b, err := mqtttest.Encode(pk, 4)
		if err != nil {
			t.Fatal(err)
		}
		sub = b
	}
	stalled.Write(sub)
	// Its SUBACK is the last thing the stalled client reads.
	if ack, err := mqtttest.ReadPacket(bufio.NewReaderSize(stalled, 16), 4); err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("no SUBACK: %+v %v", ack.FixedHeader, err)
	}
	reader := connect(t, tb.addr, as(5, "alice", "reader"))
	reader.MustSubscribe(t, 0, "alice/flood", "alice/end") // QoS 0: no in-flight quota

	pub := connect(t, tb.addr, as(4, "alice", "flooder"))
	payload := strings.Repeat("f", 64<<10)
	const n = 400 // 25 MiB: more than the socket buffers and the queue hold
	for range n { // QoS 1: the publisher waits for each to be queued
		pub.publish("alice/flood", payload, 1, false)
	}
	pub.publish("alice/end", "", 1, false)
	if !reader.waitTopic("alice/end") {
		t.Fatal("reader not served")
	}
	if got := len(without(reader.topics(), "alice/end")); got != n {
		t.Fatalf("reader got %d of %d", got, n)
	}
	dropped := counterValue(t, tb, "moat_messages_dropped_total")
	if dropped == 0 {
		t.Fatal("nothing dropped for a subscriber that does not read: its queue is unbounded")
	}
	if lines := tb.logs.Lines("subscriber queue full"); len(lines) == 0 || len(lines) > 10 {
		t.Fatalf("%d queue-full log lines for %v drops", len(lines), dropped)
	}
}

// Retained messages sent on subscribe are paced through a small queue:
// 20 subscribers at once, each matching far more retained messages than
// the queue holds, all get every one; a subscriber that never reads
// stalls only itself.
func TestRetainedPacedThroughSmallQueue(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_queued_messages 16\n"})
	pub := connect(t, tb.addr, as(4, "alice", "seeder"))
	const n = 400
	for i := range n {
		pub.publish(fmt.Sprintf("alice/dev/%d", i), strings.Repeat("r", 512), 0, true)
	}
	pub.ping()

	stalled := rawConn(t, tb.addr, "", 4, true)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "alice/#"}}}
	b, err := mqtttest.Encode(pk, 4)
	if err != nil {
		t.Fatal(err)
	}
	for range 50 { // many subscriptions' worth of retained messages
		stalled.Write(b)
	}

	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Go(func() {
			c := connect(t, tb.addr, as(byte(4+i%2), "alice", fmt.Sprintf("sub-%d", i)))
			c.mustSubscribe("alice/dev/#")
			ok := c.WaitUntil(waitLong, func(s mqtttest.State) bool { return len(s.Messages) >= n || s.Err != nil })
			if got := len(sorted(c.topics())); !ok || got != n {
				errs <- fmt.Errorf("sub-%d got %d of %d retained messages", i, got, n)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a := pub.publish("alice/live", "x", 1, false); a.code != 0 {
		t.Fatalf("live publish: 0x%02x", a.code)
	}
}
