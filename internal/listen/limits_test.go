package listen

import (
	"net/netip"
	"testing"
	"time"
)

func TestLimiterForgetsIdlePeers(t *testing.T) {
	l := newLimiter(0, 2, 20, 1) // refills in 50ms
	for i := range 100 {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i)})
		rel, reason := l.acquire(ip)
		if reason != denyNone {
			t.Fatalf("%v refused: %s", ip, reason)
		}
		if _, reason := l.acquire(ip); reason != denyRate {
			t.Fatalf("%v: burst 1 allowed a second connection (%q)", ip, reason)
		}
		rel()
		rel() // idempotent
	}
	if _, total := l.tracked(); total != 0 {
		t.Fatalf("total %d after release", total)
	}
	rel, _ := l.acquire(netip.MustParseAddr("2001:db8::1"))
	defer rel()
	// IPv6 peers share their /64.
	if _, reason := l.acquire(netip.MustParseAddr("2001:db8::2")); reason != denyRate {
		t.Errorf("same /64 not grouped: %q", reason)
	}
	eventually(t, "idle entries swept", func() bool {
		l.mu.Lock()
		l.lastSweep = time.Time{} // force the next acquire to sweep
		l.mu.Unlock()
		if r, reason := l.acquire(netip.MustParseAddr("192.0.2.1")); reason == denyNone {
			r()
		}
		entries, _ := l.tracked()
		return entries <= 2 // the live IPv6 peer, and 192.0.2.1 while its bucket refills
	})
}
