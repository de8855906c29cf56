package listen

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sweepEvery bounds how long idle per-IP entries (kept only to remember a
// rate limiter's state) may linger before they are dropped.
const sweepEvery = time.Minute

// limiter enforces the listener-wide cap, the per-IP cap and the per-IP
// connection rate. It is keyed on the client's real address; IPv6 clients are
// grouped by /64 because a single host usually owns a whole /64.
type limiter struct {
	maxTotal int
	maxPerIP int
	rate     rate.Limit
	burst    int

	mu        sync.Mutex
	total     int
	perIP     map[netip.Addr]*ipState
	lastSweep time.Time
	sweepLen  int
}

type ipState struct {
	conns int
	lim   *rate.Limiter
}

func newLimiter(maxTotal, maxPerIP int, r rate.Limit, burst int) *limiter {
	if r > 0 && burst < 1 {
		burst = 1
	}
	return &limiter{
		maxTotal:  maxTotal,
		maxPerIP:  maxPerIP,
		rate:      r,
		burst:     burst,
		perIP:     make(map[netip.Addr]*ipState),
		lastSweep: time.Now(),
		sweepLen:  1024,
	}
}

// limitKey groups addresses the way limits count them.
func limitKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, err := a.Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return a
}

// why a connection was refused, for logs and metrics.
const (
	denyNone  = ""
	denyTotal = "listener connection limit"
	denyPerIP = "per-IP connection limit"
	denyRate  = "per-IP connection rate"
)

// limitSetting names the setting behind a refusal (metric labels).
func limitSetting(reason string) string {
	switch reason {
	case denyTotal:
		return "max_connections"
	case denyPerIP:
		return "max_connections_per_ip"
	}
	return "max_connection_rate_per_ip"
}

// acquire reserves a slot for addr. On success release must be called exactly
// once when the connection ends.
func (l *limiter) acquire(addr netip.Addr) (release func(), reason string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maybeSweep(now)

	if l.maxTotal > 0 && l.total >= l.maxTotal {
		return nil, denyTotal
	}
	if !addr.IsValid() {
		// Unix sockets have no peer IP: only the listener-wide cap applies.
		l.total++
		var once sync.Once
		return func() { once.Do(l.releaseTotal) }, denyNone
	}
	key := limitKey(addr)
	st := l.perIP[key]
	if st == nil {
		st = &ipState{}
		if l.rate > 0 {
			st.lim = rate.NewLimiter(l.rate, l.burst)
		}
	}
	if st.lim != nil && !st.lim.AllowN(now, 1) {
		l.keep(key, st)
		return nil, denyRate
	}
	if l.maxPerIP > 0 && st.conns >= l.maxPerIP {
		l.keep(key, st)
		return nil, denyPerIP
	}
	st.conns++
	l.total++
	l.perIP[key] = st

	var once sync.Once
	return func() { once.Do(func() { l.release(key) }) }, denyNone
}

// keep stores st only if it carries state worth remembering.
func (l *limiter) keep(key netip.Addr, st *ipState) {
	if st.conns > 0 || st.lim != nil {
		l.perIP[key] = st
	}
}

func (l *limiter) releaseTotal() {
	l.mu.Lock()
	l.total--
	l.mu.Unlock()
}

func (l *limiter) release(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	st := l.perIP[key]
	if st == nil {
		return
	}
	st.conns--
	if st.conns <= 0 && l.idle(st, time.Now()) {
		delete(l.perIP, key)
	}
}

// idle reports whether an entry holds no information beyond the defaults.
func (l *limiter) idle(st *ipState, now time.Time) bool {
	return st.conns <= 0 && (st.lim == nil || st.lim.TokensAt(now) >= float64(l.burst))
}

// maybeSweep drops idle entries once a minute or when the map doubled, so the
// map stays proportional to live connections plus recent rate-limited peers.
func (l *limiter) maybeSweep(now time.Time) {
	if now.Sub(l.lastSweep) < sweepEvery && len(l.perIP) < 2*l.sweepLen {
		return
	}
	for k, st := range l.perIP {
		if l.idle(st, now) {
			delete(l.perIP, k)
		}
	}
	l.lastSweep = now
	l.sweepLen = max(1024, len(l.perIP))
}

// tracked returns the number of per-IP entries (for tests and metrics).
func (l *limiter) tracked() (entries, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.perIP), l.total
}
