package auth

import (
	"net/netip"
	"sync"
	"time"
)

// BanOptions configures brute-force protection.
type BanOptions struct {
	// Threshold is the number of failed logins for one user from one
	// network that starts bans of that user there; a network as a whole
	// gets NetworkFactor times as many. 0 disables banning (the
	// concurrency caps stay).
	Threshold int
	// Base is the first ban; each further failure doubles it up to Max.
	Base, Max time.Duration
	// MaxEntries bounds memory; the stalest entries are dropped first.
	MaxEntries int
	// IPv4Prefix and IPv6Prefix group addresses into the networks that
	// are counted and banned together (default /32 and /64: one IPv6
	// subscriber is handed a /64).
	IPv4Prefix, IPv6Prefix int
	// NetworkConcurrency and UserConcurrency cap the password
	// verifications running at once for one network and for one user;
	// attempts beyond them are refused at once, without hashing. The
	// per-user cap is larger than the per-network one, so one network
	// cannot fill it, and it does not apply where the user logged in
	// before: guesses from elsewhere cannot keep the user out.
	NetworkConcurrency, UserConcurrency int
	// TrustFor is how long a successful login of a user from a network
	// exempts that user there from the network's ban.
	TrustFor time.Duration
}

// Defaults of the options that have no setting of their own.
const (
	NetworkFactor             = 4
	DefaultNetworkConcurrency = 4
	DefaultUserConcurrency    = 8
	DefaultTrustFor           = 7 * 24 * time.Hour
)

// bans decides which login attempts may cost a password verification.
//
// Three counters, each per network (an address grouped by prefix):
//   - (user, network) for users in the password file: Threshold failures
//     ban that user from that network only, never from elsewhere;
//   - the network, for every named attempt (known or unknown user):
//     NetworkFactor*Threshold failures ban the network for named attempts
//     (a password spray), except for users that have logged in
//     successfully from it within TrustFor and are not banned themselves;
//   - anonymous attempts: NetworkFactor*Threshold failures ban anonymous
//     attempts only. They cost no hash, and must not lock the named users
//     of a house out because one old device connects without credentials.
//
// Attempts are charged when they start, so many sent at once cannot all
// be verified before the first failure is counted, and no more than the
// concurrency caps run at once.
type bans struct {
	opt BanOptions
	now func() time.Time

	mu       sync.Mutex
	entries  map[banKey]*banEntry
	trusted  map[banKey]time.Time // (user, network): last successful login
	userBusy map[string]int       // verifications running per user
}

type banKind uint8

const (
	kindUser banKind = iota + 1
	kindNetwork
	kindAnonymous
)

type banKey struct {
	kind          banKind
	user, network string
}

type banEntry struct {
	failures int
	inflight int // verifications started and not finished
	until    time.Time
	last     time.Time
}

// attempt is one CONNECT as the bans see it.
type attempt struct {
	user    string
	network string
	named   bool // a username was given
	known   bool // ...and it is in the password file
	// userSlot: begin counted it against the per-user cap.
	userSlot bool
}

// verdict is the answer to an attempt that wants a verification.
type verdict uint8

const (
	admitted verdict = iota
	refusedBanned
	refusedBusy
)

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
	if o.IPv4Prefix <= 0 || o.IPv4Prefix > 32 {
		o.IPv4Prefix = 32
	}
	if o.IPv6Prefix <= 0 || o.IPv6Prefix > 128 {
		o.IPv6Prefix = 64
	}
	if o.NetworkConcurrency <= 0 {
		o.NetworkConcurrency = DefaultNetworkConcurrency
	}
	if o.UserConcurrency <= 0 {
		o.UserConcurrency = DefaultUserConcurrency
	}
	if o.TrustFor <= 0 {
		o.TrustFor = DefaultTrustFor
	}
	return &bans{opt: o, now: now, entries: map[banKey]*banEntry{}, trusted: map[banKey]time.Time{}, userBusy: map[string]int{}}
}

// network groups an address as networks are handed out; anything that is
// not an IP address (a Unix socket peer) is its own network.
func (b *bans) network(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.WithZone("").Unmap()
	bits := b.opt.IPv6Prefix
	if a.Is4() {
		bits = b.opt.IPv4Prefix
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return a.String()
	}
	return p.String()
}

func (b *bans) attempt(user string, named, known bool, ip string) attempt {
	return attempt{user: user, network: b.network(ip), named: named, known: named && known}
}

func (a attempt) userKey() banKey    { return banKey{kindUser, a.user, a.network} }
func (a attempt) networkKey() banKey { return banKey{kindNetwork, "", a.network} }
func (a attempt) anonKey() banKey    { return banKey{kindAnonymous, "", a.network} }

func (b *bans) networkThreshold() int { return NetworkFactor * b.opt.Threshold }

// get returns the entry, with failures forgiven after a long quiet time.
func (b *bans) get(k banKey, now time.Time) *banEntry {
	e := b.entries[k]
	if e != nil && e.inflight == 0 && now.Sub(e.last) > b.opt.Max+time.Hour {
		delete(b.entries, k)
		return nil
	}
	return e
}

// open reports whether one more attempt may start against an entry: not
// during a ban, and no more at once than would reach the threshold (one
// at a time once the threshold has been reached).
func (b *bans) open(k banKey, threshold int, now time.Time) bool {
	e := b.get(k, now)
	if e == nil {
		return true
	}
	if now.Before(e.until) {
		return false
	}
	return e.inflight < max(threshold-e.failures, 1)
}

// blocked reports whether the attempt is refused by a ban.
func (b *bans) blocked(a attempt, now time.Time) bool {
	if b.opt.Threshold <= 0 {
		return false
	}
	switch {
	case !a.named:
		return !b.open(a.anonKey(), b.networkThreshold(), now)
	case a.known && !b.open(a.userKey(), b.opt.Threshold, now):
		return true
	case a.known && b.isTrusted(a, now):
		return false
	default:
		return !b.open(a.networkKey(), b.networkThreshold(), now)
	}
}

func (b *bans) isTrusted(a attempt, now time.Time) bool {
	t, ok := b.trusted[a.userKey()]
	return ok && now.Sub(t) < b.opt.TrustFor
}

// banned reports whether the attempt is refused by a ban, without
// charging it.
func (b *bans) banned(a attempt) bool {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blocked(a, now)
}

// begin charges a named attempt that needs a password verification, or
// refuses it. An admitted attempt must be ended with end.
func (b *bans) begin(a *attempt) verdict {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.blocked(*a, now) {
		return refusedBanned
	}
	nk := a.networkKey()
	userSlot := a.known && !b.isTrusted(*a, now)
	if n := b.entries[nk]; n != nil && n.inflight >= b.opt.NetworkConcurrency ||
		userSlot && b.userBusy[a.user] >= b.opt.UserConcurrency {
		return refusedBusy
	}
	b.charge(nk, now)
	if a.known {
		b.charge(a.userKey(), now)
	}
	if userSlot {
		b.userBusy[a.user]++
		a.userSlot = true
	}
	return admitted
}

func (b *bans) charge(k banKey, now time.Time) {
	e := b.get(k, now)
	if e == nil {
		if len(b.entries) >= b.opt.MaxEntries {
			b.evict(now)
		}
		e = &banEntry{last: now}
		b.entries[k] = e
	}
	e.inflight++
}

// end finishes an attempt begin admitted; failed counts it as a failure
// (false: the password was right, or the verification never ran). It
// reports whether a ban started.
func (b *bans) end(a attempt, failed bool) bool {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := []banKey{a.networkKey()}
	if a.known {
		keys = append(keys, a.userKey())
	}
	if a.userSlot {
		if b.userBusy[a.user]--; b.userBusy[a.user] <= 0 {
			delete(b.userBusy, a.user)
		}
	}
	started := false
	for _, k := range keys {
		e := b.entries[k]
		if e == nil {
			continue
		}
		e.inflight--
		if failed && b.bump(k, now) {
			started = true
		}
		if e.inflight <= 0 && e.failures == 0 {
			delete(b.entries, k)
		}
	}
	return started
}

// fail counts a failure that needed no verification (anonymous, no
// password, an unsafe name) and reports whether a ban started.
func (b *bans) fail(a attempt) bool {
	if b.opt.Threshold <= 0 {
		return false
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !a.named {
		return b.bump(a.anonKey(), now)
	}
	started := b.bump(a.networkKey(), now)
	if a.known && b.bump(a.userKey(), now) {
		started = true
	}
	return started
}

func (b *bans) threshold(k banKey) int {
	if k.kind == kindUser {
		return b.opt.Threshold
	}
	return b.networkThreshold()
}

func (b *bans) bump(k banKey, now time.Time) bool {
	if b.opt.Threshold <= 0 {
		return false
	}
	e := b.get(k, now)
	if e == nil {
		if len(b.entries) >= b.opt.MaxEntries {
			b.evict(now)
		}
		e = &banEntry{}
		b.entries[k] = e
	}
	e.failures++
	e.last = now
	threshold := b.threshold(k)
	if e.failures < threshold {
		return false
	}
	d := b.opt.Base
	for i := threshold; i < e.failures && d < b.opt.Max; i++ {
		d *= 2
	}
	e.until = now.Add(min(d, b.opt.Max))
	return true
}

// succeed forgets the user's failures from this network after a good
// login, and trusts the user there. The network's count is kept: one
// good login does not excuse a spray of others.
func (b *bans) succeed(a attempt) {
	if !a.known {
		return
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	k := a.userKey()
	if e := b.entries[k]; e != nil && e.inflight == 0 {
		delete(b.entries, k)
	} else if e != nil {
		e.failures, e.until = 0, time.Time{}
	}
	if _, ok := b.trusted[k]; !ok && len(b.trusted) >= b.opt.MaxEntries {
		b.evictTrusted(now)
	}
	b.trusted[k] = now
}

// evict drops expired entries, or the stalest half when none expired.
// Entries with verifications running are kept: end finds them.
func (b *bans) evict(now time.Time) {
	for k, e := range b.entries {
		if e.inflight == 0 && now.After(e.until) && now.Sub(e.last) > b.opt.Base {
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
		if e.inflight == 0 && (e.last.Before(cut) || e.last.Equal(oldest)) {
			delete(b.entries, k)
		}
	}
}

// evictTrusted drops trust that ran out, or the oldest half. Only correct
// passwords create trust, so an attacker cannot flush it.
func (b *bans) evictTrusted(now time.Time) {
	var oldest time.Time
	for k, t := range b.trusted {
		if now.Sub(t) >= b.opt.TrustFor {
			delete(b.trusted, k)
		} else if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if len(b.trusted) < b.opt.MaxEntries {
		return
	}
	cut := oldest.Add(now.Sub(oldest) / 2)
	for k, t := range b.trusted {
		if !t.After(cut) {
			delete(b.trusted, k)
		}
	}
}

func (b *bans) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries) + len(b.trusted)
}
