package store

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// benchDir is MOAT_BENCH_DIR (e.g. a gocryptfs mount) or a temp dir.
func benchDir(b *testing.B) string {
	base := os.Getenv("MOAT_BENCH_DIR")
	if base == "" {
		return b.TempDir()
	}
	d, err := os.MkdirTemp(base, "storebench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// BenchmarkRetainedSave: durable QoS 1 retained saves per second through
// the store's group commit, 1 and 16 concurrent publishers.
func BenchmarkRetainedSave(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			st := openStore(b, benchDir(b), Options{})
			defer st.Close()
			per := b.N/writers + 1
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
						Payload: make([]byte, 100)}
					for i := range per {
						pk.TopicName = fmt.Sprintf("sensor/%d/%d", w, i%1000)
						if err := st.saveRetained(pk.TopicName, &pk, true); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(per*writers)/b.Elapsed().Seconds(), "saves/s")
		})
	}
}

// BenchmarkRestore100k: Open to Restore done with 100k retained messages
// (100 B payloads), and the heap each restored message costs.
func BenchmarkRestore100k(b *testing.B) {
	const n = 100_000
	dir := benchDir(b)
	st := openStore(b, dir, Options{})
	st.mu.Lock()
	for i := range n {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
			ProtocolVersion: 4, Created: 1700000000, TopicName: fmt.Sprintf("user%d/dev/%d", i/10, i%10), Payload: make([]byte, 100)}
		st.enqueueLocked(false, op{kind: opRetained, key: []byte(pk.TopicName), pk: &pk})
	}
	done := st.enqueueLocked(true)
	st.mu.Unlock()
	<-done.done
	if done.err != nil {
		b.Fatal(done.err)
	}
	st.Close()
	var heap float64
	b.ResetTimer()
	for b.Loop() {
		var before, after runtime.MemStats
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		st := openStore(b, dir, Options{})
		srv := newServer()
		stats, err := st.Restore(srv)
		if err != nil || stats.Retained != n {
			b.Fatalf("restored %d: %v", stats.Retained, err)
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(srv)
		st.Close()
		b.StartTimer()
	}
	b.ReportMetric(heap, "heapB/msg")
}
