package broker_test

import (
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// settle waits until the goroutines and per-client records are back at
// (at most) base, and returns what it saw last.
func settle(tb *testBroker, goroutines int, records broker.Records) (int, broker.Records, bool) {
	deadline := time.Now().Add(waitLong)
	for {
		g, r := runtime.NumGoroutine(), tb.b.Records()
		if g <= goroutines && r == records {
			return g, r, true
		}
		if time.Now().After(deadline) {
			return g, r, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Rounds of connect-all / close-all leave nothing behind: after each
// round the goroutines and every per-client record (mochi's clients, auth
// identities and approvals, listener sessions, limiter counts and per-IP
// entries) are back at their baseline, whatever way the clients left
// (DISCONNECT, a dropped socket, a takeover, a refused login, a socket
// that never sent CONNECT). Each connection costs mochi's two goroutines
// and nothing more.
func TestChurnReturnsToBaseline(t *testing.T) {
	const rounds, n = 5, 300
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_connections_per_ip 10000\nmax_connections 10000\nban_threshold 0\nmax_sessions_per_user 0\n"})
	warm := connect(t, tb.addr, as(4, "alice", "warm"))
	warm.mustSubscribe("alice/#")
	warm.disconnect()
	time.Sleep(waitQuiet) // the warm-up client's session has ended
	baseG, baseR := runtime.NumGoroutine(), tb.b.Records()
	if baseR.Clients != 0 || baseR.Sessions != 0 || baseR.Counted != 0 {
		t.Fatalf("baseline not empty: %+v", baseR)
	}

	for round := range rounds {
		clients := make([]*mqtttest.Client, n)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		sem := make(chan struct{}, 32)
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				o := as(byte(4+i%2), "alice", fmt.Sprintf("churn-%d", i))
				c, ack, err := mqtttest.Dial(tb.addr, o.options())
				if err != nil || ack.ReasonCode != 0 {
					errs <- fmt.Errorf("client %d: %v 0x%02x", i, err, ack.ReasonCode)
					return
				}
				if codes := c.Subscribe(t, 1, fmt.Sprintf("alice/%d/#", i), "alice/all"); len(codes) != 2 || codes[0] > 2 {
					errs <- fmt.Errorf("client %d: SUBACK %v", i, codes)
				}
				clients[i] = c
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		// All connected: each costs its test client's reader and the
		// broker's goroutines.
		if g := runtime.NumGoroutine(); g-baseG-n > 2*n+10 {
			t.Fatalf("round %d: %d goroutines for %d connections (baseline %d): more than 2 per connection in the broker",
				round, g, n, baseG)
		}
		if r := tb.b.Records(); r.Clients != n || r.Identities != n || r.Sessions != n || r.Counted != n {
			t.Fatalf("round %d: records with %d connected: %+v", round, n, r)
		}
		if got := counterValue(t, tb, "moat_client_records", "kind", "identities"); got != n {
			t.Fatalf("round %d: moat_client_records{kind=identities} = %v, want %d", round, got, n)
		}
		// Hostile leavers on top: refused logins, sockets that never
		// speak, takeovers of a live id.
		for i := range 20 {
			bad := as(4, "alice", fmt.Sprintf("bad-%d", i))
			bad.pass = "wrong"
			c, _ := dial(t, tb.addr, bad)
			c.drop()
			raw, err := net.Dial("tcp", tb.addr)
			if err != nil {
				t.Fatal(err)
			}
			raw.Close()
		}
		for i := 0; i < n; i += 10 {
			c := connect(t, tb.addr, as(5, "alice", fmt.Sprintf("churn-%d", i)))
			clients[i].Close()
			clients[i] = c.Client
		}
		for i, c := range clients {
			if i%2 == 0 {
				_ = c.Disconnect()
			}
			_ = c.Close()
		}
		if g, r, ok := settle(tb, baseG, baseR); !ok {
			t.Fatalf("round %d: after closing all, %d goroutines (baseline %d), records %+v (baseline %+v)", round, g, baseG, r, baseR)
		}
	}
}
