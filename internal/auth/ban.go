package auth

import (
	"sync"
	"time"
)

// BanOptions configures brute-force protection.
type BanOptions struct {
	// Threshold consecutive failures start bans; 0 disables banning.
	Threshold int
	// Base is the first ban; each further failure doubles it up to Max.
	Base, Max time.Duration
	// MaxEntries bounds memory; the stalest entries are dropped first.
	MaxEntries int
}

// bans counts failures per source IP and per (username, IP). Keying the
// username on the IP too means an attacker guessing a name from elsewhere
// cannot lock its owner out where the owner logs in.
type bans struct {
	opt BanOptions
	now func() time.Time

	mu      sync.Mutex
	entries map[banKey]*banEntry
}

type banKey struct{ user, ip string }

type banEntry struct {
	failures int
	until    time.Time
	last     time.Time
}

func newBans(o BanOptions, now func() time.Time) *bans {
	if o.MaxEntries <= 0 {
		o.MaxEntries = 100000
	}
	if o.Base <= 0 {
		o.Base = 2 * time.Second
	}
	if o.Max < o.Base {
		o.Max = o.Base
	}
	return &bans{opt: o, now: now, entries: map[banKey]*banEntry{}}
}

// banned reports whether the IP, or this username from this IP, is banned.
func (b *bans) banned(user, ip string) bool {
	if b.opt.Threshold <= 0 {
		return false
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range [2]banKey{{"", ip}, {user, ip}} {
		if e, ok := b.entries[k]; ok && now.Before(e.until) {
			return true
		}
	}
	return false
}

// fail records a failure and reports whether it started a ban. The per-IP
// counter gets a larger allowance: many users share one NAT address.
func (b *bans) fail(user, ip string) bool {
	if b.opt.Threshold <= 0 {
		return false
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	started := b.bump(banKey{user, ip}, b.opt.Threshold, now)
	if b.bump(banKey{"", ip}, 4*b.opt.Threshold, now) {
		started = true
	}
	return started
}

func (b *bans) bump(k banKey, threshold int, now time.Time) bool {
	e, ok := b.entries[k]
	if !ok {
		if len(b.entries) >= b.opt.MaxEntries {
			b.evict(now)
		}
		e = &banEntry{}
		b.entries[k] = e
	} else if now.Sub(e.last) > b.opt.Max+time.Hour {
		// Old failures are forgiven.
		*e = banEntry{}
	}
	e.failures++
	e.last = now
	if e.failures < threshold {
		return false
	}
	d := b.opt.Base
	for i := threshold; i < e.failures && d < b.opt.Max; i++ {
		d *= 2
	}
	d = min(d, b.opt.Max)
	e.until = now.Add(d)
	return true
}

// succeed forgets the (username, IP) failures after a good login.
func (b *bans) succeed(user, ip string) {
	if b.opt.Threshold <= 0 {
		return
	}
	b.mu.Lock()
	delete(b.entries, banKey{user, ip})
	b.mu.Unlock()
}

// evict drops expired entries, or the stalest half when none expired.
func (b *bans) evict(now time.Time) {
	for k, e := range b.entries {
		if now.After(e.until) && now.Sub(e.last) > b.opt.Base {
			delete(b.entries, k)
		}
	}
	if len(b.entries) < b.opt.MaxEntries {
		return
	}
	var oldest time.Time
	for _, e := range b.entries {
		if oldest.IsZero() || e.last.Before(oldest) {
			oldest = e.last
		}
	}
	cut := oldest.Add(now.Sub(oldest) / 2)
	for k, e := range b.entries {
		if e.last.Before(cut) || e.last.Equal(oldest) {
			delete(b.entries, k)
		}
	}
}

func (b *bans) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}
