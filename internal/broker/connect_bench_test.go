package broker_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// BenchmarkConnect is one client's TCP connect, CONNECT with a password,
// CONNACK and DISCONNECT through the whole broker (run with -cpuprofile
// to see where a connect goes).
func BenchmarkConnect(b *testing.B) {
	tb := startBroker(b, setup{acl: tableBACL, conf: "ban_threshold 0\n"})
	i := 0
	for b.Loop() {
		o := as(4, "alice", fmt.Sprintf("bench-%d", i%64))
		c, ack, err := mqtttest.Dial(tb.addr, o.options())
		if err != nil || ack.ReasonCode != 0 {
			b.Fatalf("connect: %v 0x%02x", err, ack.ReasonCode)
		}
		_ = c.Disconnect()
		_ = c.Close()
		i++
	}
}

// BenchmarkIdleConnectionMemory reports the broker's heap per idle
// connection (test clients in the same process add their own share).
func BenchmarkIdleConnectionMemory(b *testing.B) {
	tb := startBroker(b, setup{acl: tableBACL, conf: "ban_threshold 0\n"})
	const n = 1000
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		clients := make([]*mqtttest.Client, n)
		for i := range clients {
			c, ack, err := mqtttest.Dial(tb.addr, as(4, "alice", fmt.Sprintf("idle-%d", i)).options())
			if err != nil || ack.ReasonCode != 0 {
				b.Fatalf("connect: %v", err)
			}
			clients[i] = c
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse)/n, "bytes/conn")
		for _, c := range clients {
			_ = c.Close()
		}
	}
}
