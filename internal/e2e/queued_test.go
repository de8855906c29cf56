package e2e

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// TestPersistCrashQueued kills Moat with SIGKILL during a storm of QoS 1
// and QoS 2 publishes to persistent sessions that are offline: every
// publish acknowledged before the kill must reach every session after the
// restart. QoS 1 may arrive twice (counted); QoS 2 never does.
func TestPersistCrashQueued(t *testing.T) {
	e := newPersistEnv(t, "max_queued_messages 50000")
	m := e.start()

	type session struct {
		id  string
		v   byte
		qos byte
	}
	sessions := []session{{"q1-v5", 5, 1}, {"q2-v5", 5, 2}, {"q1-v4", 4, 1}, {"q2-v4", 4, 2}}
	opts := func(s session) mqtttest.Options {
		return mqtttest.Options{Version: s.v, ClientID: s.id, Persistent: true, SessionExpiry: 3600, KeepAlive: 60, AutoAck: true}
	}
	for _, s := range sessions {
		c := dial(t, e.addr, opts(s))
		c.MustSubscribe(t, s.qos, "q/#")
		_ = c.Disconnect()
	}

	// acked[payload] is the publish's QoS, once its PUBACK / PUBREC arrived.
	var mu sync.Mutex
	acked := map[string]byte{}
	ack := func(p string, qos byte) {
		mu.Lock()
		acked[p] = qos
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var total atomic.Int64
	for p := range 2 { // QoS 1, windows of 16 in flight
		c := dial(t, e.addr, mqtttest.Options{ClientID: fmt.Sprintf("pub1-%d", p), KeepAlive: 60, Timeout: 5 * time.Second})
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			_ = c.PublishWindow(16, stop, func() (mqtttest.Msg, bool) {
				n++
				return mqtttest.Msg{Topic: fmt.Sprintf("q/%d", p), Payload: fmt.Appendf(nil, "qos1-%d-%d", p, n)}, true
			}, func(m mqtttest.Msg, code byte) {
				if code < 0x80 {
					ack(string(m.Payload), 1)
					total.Add(1)
				}
			})
		}()
	}
	for p := range 2 { // QoS 2, one at a time
		c := dial(t, e.addr, mqtttest.Options{ClientID: fmt.Sprintf("pub2-%d", p), KeepAlive: 60, Timeout: 5 * time.Second})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for n := 1; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				id := uint16(n%30000) + 1
				payload := fmt.Sprintf("qos2-%d-%d", p, n)
				if err := c.SendPublish(fmt.Sprintf("q/two/%d", p), []byte(payload), 2, false, id); err != nil {
					return
				}
				rec, ok := c.WaitPacket(packets.Pubrec, id, 5*time.Second)
				if !ok {
					return
				}
				if rec.ReasonCode < 0x80 {
					ack(payload, 2)
					total.Add(1)
				}
				if c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: id}) != nil {
					return
				}
				if _, ok := c.WaitPacket(packets.Pubcomp, id, 5*time.Second); !ok {
					return
				}
			}
		}()
	}
	deadline := time.Now().Add(4 * time.Second)
	for total.Load() < 3000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	m.Kill()
	close(stop)
	wg.Wait()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	if n == 0 {
		t.Fatal("no publish was acknowledged before the kill")
	}
	waitUnmounted(t, e.plain, 15*time.Second)

	m2 := e.start()
	defer m2.Stop()
	if _, n := restored(t, m2); n != len(sessions) {
		t.Errorf("restored %d sessions, want %d", n, len(sessions))
	}
	lostTotal, dupTotal := 0, 0
	for _, s := range sessions {
		c := dial(t, e.addr, opts(s))
		got := map[string]int{}
		seen := 0
		for quiet := 0; quiet < 3; {
			c.WaitUntil(time.Second, func(st mqtttest.State) bool { return len(st.Messages) > seen })
			var now int
			c.WaitUntil(0, func(st mqtttest.State) bool {
				for _, pk := range st.Messages[seen:] {
					got[string(pk.Payload)]++
				}
				now = len(st.Messages)
				return true
			})
			if now == seen {
				quiet++
			} else {
				quiet = 0
			}
			seen = now
		}
		lost, dups := 0, 0
		for p, qos := range acked {
			switch k := got[p]; {
			case k == 0:
				lost++
				if lost <= 5 {
					t.Errorf("%s: acknowledged %s never delivered after the restart", s.id, p)
				}
			case k > 1:
				dups++
				if min(qos, s.qos) == 2 {
					t.Errorf("%s: QoS 2 message %s delivered %d times", s.id, p, k)
				}
			}
		}
		lostTotal += lost
		dupTotal += dups
		t.Logf("%s (v%d, QoS %d): %d acknowledged, %d delivered after restart, %d lost, %d duplicated",
			s.id, s.v, s.qos, len(acked), len(got), lost, dups)
		_ = c.Disconnect()
	}
	t.Logf("kill -9 during a storm to offline sessions: %d publishes acknowledged; lost %d, duplicated %d (over %d sessions)",
		n, lostTotal, dupTotal, len(sessions))
}
