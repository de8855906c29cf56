package listen

import (
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
)

// Every connection a limit refuses is reported with the setting's name,
// and logged only a few times per window however many there are.
func TestRefusalsReportedAndLogRateLimited(t *testing.T) {
	const capPerIP, flood = 5, 200
	logs := &logBuffer{}
	var mu sync.Mutex
	counts := map[string]int{}
	_, l := newBroker(t, Options{
		MaxConnectionsPerIP: capPerIP,
		Logger:              slog.New(slog.NewTextHandler(logs, nil)),
		OnRefused: func(limit string) {
			mu.Lock()
			counts[limit]++
			mu.Unlock()
		},
	})
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range flood {
		d := net.Dialer{Timeout: ioDeadline}
		c, err := d.Dial("tcp", l.Address())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	eventually(t, "all refusals reported", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return counts["max_connections_per_ip"] == flood-capPerIP
	})
	mu.Lock()
	if len(counts) != 1 {
		t.Errorf("refusals reported under %v", counts)
	}
	mu.Unlock()
	if n := strings.Count(logs.String(), `msg="connection refused"`); n == 0 || n > 5 {
		t.Fatalf("%d refusal lines logged for %d refusals", n, flood-capPerIP)
	}
}
