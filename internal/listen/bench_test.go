package listen

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssBytes reads the resident set size from /proc (Linux only).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// BenchmarkIdleConnections reports memory per 1000 idle connections through
// the listener (both ends live in this process, so client-side sockets are
// included in RSS; the heap figure is dominated by the server side).
func BenchmarkIdleConnections(b *testing.B) {
	for _, tc := range []struct {
		name      string
		connected bool
		ws        bool
	}{
		{"tcp-preconnect", false, false},
		{"tcp-connected", true, false},
		{"ws-connected", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			const n = 1000
			for range b.N {
				_, l := newBroker(b, Options{WebSocket: tc.ws, ConnectTimeout: time.Minute})
				heap0, rss0, g0 := heapInUse(), rssBytes(), runtime.NumGoroutine()
				conns := make([]net.Conn, 0, n)
				for i := range n {
					var c net.Conn
					if tc.ws {
						var err error
						c, _, err = dialWS(b, wsURL("ws", l, "/"), nil, nil)
						if err != nil {
							b.Fatal(err)
						}
					} else {
						c = dialTCP(b, "", l.Address())
					}
					if tc.connected {
						connectConn(b, c, "idle"+strconv.Itoa(i), 4)
					}
					conns = append(conns, c)
				}
				eventually(b, "all accepted", func() bool { got, _ := l.Stats(); return got == n })
				heap1, rss1, g1 := heapInUse(), rssBytes(), runtime.NumGoroutine()
				b.ReportMetric(float64(heap1-heap0)/1024, "heapKiB/1k")
				b.ReportMetric(float64(rss1-rss0)/1024, "rssKiB/1k")
				b.ReportMetric(float64(g1-g0), "goroutines/1k")
				for _, c := range conns {
					_ = c.Close()
				}
			}
		})
	}
}
