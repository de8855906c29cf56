package auth

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestBans(o BanOptions) (*bans, *clock) {
	c := &clock{t: time.Unix(1e9, 0)}
	return newBans(o, c.now), c
}

// known, unknown and anonymous attempts as OnConnect builds them.
func known(b *bans, user, ip string) attempt   { return b.attempt(user, true, true, ip) }
func unknown(b *bans, user, ip string) attempt { return b.attempt(user, true, false, ip) }
func anonymous(b *bans, ip string) attempt     { return b.attempt("", false, false, ip) }

// verify runs one verification through begin/end, as OnConnect does.
func verify(b *bans, a attempt, good bool) verdict {
	v := b.begin(&a)
	if v == admitted {
		b.end(a, !good)
		if good {
			b.succeed(a)
		}
	}
	return v
}

func TestBansPerUserAndNetwork(t *testing.T) {
	b, c := newTestBans(BanOptions{Threshold: 3, Base: 2 * time.Second, Max: 16 * time.Second})
	steps := []struct {
		do         string // fail, ok, wait, check
		user, ip   string
		wait       time.Duration
		wantBanned map[[2]string]bool
	}{
		{do: "fail", user: "alice", ip: "192.0.2.1"},
		{do: "fail", user: "alice", ip: "192.0.2.1"},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "192.0.2.1"}: false}},
		{do: "fail", user: "alice", ip: "192.0.2.1"}, // third: banned for 2 s
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "192.0.2.1"}: true, {"alice", "192.0.2.2"}: false, {"bob", "192.0.2.1"}: false}},
		{do: "wait", wait: 2100 * time.Millisecond},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "192.0.2.1"}: false}},
		{do: "fail", user: "alice", ip: "192.0.2.1"}, // fourth: 4 s
		{do: "wait", wait: 3 * time.Second},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "192.0.2.1"}: true}},
		{do: "wait", wait: 1100 * time.Millisecond},
		{do: "ok", user: "alice", ip: "192.0.2.1"},
		{do: "fail", user: "alice", ip: "192.0.2.1"}, // counting starts again after a success
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "192.0.2.1"}: false}},
	}
	for i, s := range steps {
		switch s.do {
		case "fail":
			verify(b, known(b, s.user, s.ip), false)
		case "ok":
			if v := verify(b, known(b, s.user, s.ip), true); v != admitted {
				t.Fatalf("step %d: right password refused (%d)", i, v)
			}
		case "wait":
			c.advance(s.wait)
		case "check":
			for k, want := range s.wantBanned {
				if got := b.banned(known(b, k[0], k[1])); got != want {
					t.Fatalf("step %d: banned(%s, %s) = %v, want %v", i, k[0], k[1], got, want)
				}
			}
		}
	}
}

// A spray of names from one network bans the network for named attempts,
// except for users who logged in from there before (and are not banned
// themselves); other networks are untouched.
func TestBansNetworkSpray(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 3, Base: time.Second, Max: time.Minute})
	const nat = "198.51.100.7"
	verify(b, known(b, "bob", nat), true) // bob logs in from the house
	for i := range NetworkFactor * 3 {
		verify(b, unknown(b, fmt.Sprintf("guess%d", i), nat), false)
	}
	for _, tc := range []struct {
		name string
		a    attempt
		want bool
	}{
		{"unknown user", unknown(b, "someone", nat), true},
		{"known user never seen here", known(b, "alice", nat), true},
		{"trusted user", known(b, "bob", nat), false},
		{"anonymous is judged by its own counter", anonymous(b, nat), false},
		{"other network", known(b, "alice", "198.51.100.8"), false},
	} {
		if got := b.banned(tc.a); got != tc.want {
			t.Errorf("%s: banned = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A trusted user is still stopped after its own failures.
	for range 3 {
		verify(b, known(b, "bob", nat), false)
	}
	if !b.banned(known(b, "bob", nat)) {
		t.Error("a trusted user's own failures did not ban it")
	}
}

// Anonymous failures (allow_anonymous false) ban anonymous attempts only:
// one old device must not lock the named users of a house out.
func TestBansAnonymousNeverBanNamedUsers(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 3, Base: time.Second, Max: time.Minute})
	const house = "2001:db8:7:7::10"
	for range 1000 {
		b.fail(anonymous(b, house))
	}
	if !b.banned(anonymous(b, house)) {
		t.Fatal("anonymous attempts not banned after 1000 failures")
	}
	for _, a := range []attempt{known(b, "alice", house), known(b, "alice", "2001:db8:7:7::11"), unknown(b, "newdevice", house)} {
		if v := verify(b, a, true); v != admitted {
			t.Errorf("%s from %s refused (%d) after anonymous failures", a.user, a.network, v)
		}
	}
}

// Any number of failures for a user from one network never bans it from
// another, nor other users from the first.
func TestBansNeverLockOutElsewhere(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 5, Base: time.Second, Max: time.Hour})
	for range 1000 {
		b.fail(known(b, "alice", "203.0.113.66"))
	}
	if !b.banned(known(b, "alice", "203.0.113.66")) {
		t.Fatal("not banned")
	}
	for _, a := range []attempt{known(b, "alice", "203.0.113.67"), known(b, "alice", "2001:db8::1"), known(b, "alice", "127.0.0.1")} {
		if v := verify(b, a, true); v != admitted {
			t.Errorf("alice from %s refused: %d", a.network, v)
		}
	}
	verify(b, known(b, "bob", "198.51.100.1"), true)
	// bob logged in from there before the spray (threshold 5 x 4 = 20
	// network failures reached by alice's): he is trusted there.
	b2, _ := newTestBans(BanOptions{Threshold: 5, Base: time.Second, Max: time.Hour})
	verify(b2, known(b2, "bob", "203.0.113.66"), true)
	for range 1000 {
		b2.fail(known(b2, "alice", "203.0.113.66"))
	}
	if v := verify(b2, known(b2, "bob", "203.0.113.66"), true); v != admitted {
		t.Errorf("bob, trusted at the attacked address, refused: %d", v)
	}
}

// Attempts are charged when they start: of 300 sent at once, no more are
// admitted than the threshold (per user) or the concurrency caps allow.
func TestBansChargeAtStart(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 5, Base: time.Second, Max: time.Minute})
	const ip = "192.0.2.50"
	count := func(mk func(i int) attempt) (admittedN int, held []attempt) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 300 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := mk(i)
				if b.begin(&a) == admitted {
					mu.Lock()
					held = append(held, a)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return len(held), held
	}
	n, held := count(func(int) attempt { return known(b, "alice", ip) })
	if n > DefaultNetworkConcurrency {
		t.Fatalf("300 parallel guesses for alice: %d admitted at once", n)
	}
	for _, a := range held {
		b.end(a, true)
	}
	first := n
	// Now a spray over unknown names: the network cap bounds each burst,
	// and the network threshold bounds the total.
	total := 0
	for round := range 20 {
		n, held := count(func(i int) attempt { return unknown(b, fmt.Sprintf("u%d-%d", round, i), ip) })
		if n > DefaultNetworkConcurrency {
			t.Fatalf("round %d: %d verifications at once from one network, cap %d", round, n, DefaultNetworkConcurrency)
		}
		total += n
		for _, a := range held {
			b.end(a, true)
		}
	}
	if want := NetworkFactor*5 - first; total > want {
		t.Errorf("%d guesses verified from one network, want at most %d", total, want)
	}
	t.Logf("300 parallel guesses for one user: %d verified; 6000 for unknown names: %d verified", first, total)
}

func TestBansNetworkGrouping(t *testing.T) {
	tests := []struct {
		v4, v6 int
		a, b   string
		same   bool
	}{
		{0, 0, "192.0.2.1", "192.0.2.1", true},
		{0, 0, "192.0.2.1", "192.0.2.2", false},
		{24, 0, "192.0.2.1", "192.0.2.200", true},
		{24, 0, "192.0.2.1", "192.0.3.1", false},
		{0, 0, "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true},
		{0, 0, "2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{0, 48, "2001:db8:1:2::1", "2001:db8:1:3::1", true},
		{0, 128, "2001:db8:1:2::1", "2001:db8:1:2::2", false},
		{0, 0, "::ffff:192.0.2.1", "192.0.2.1", true},
		{0, 0, "fe80::1%eth0", "fe80::2%eth1", true},
		{0, 0, "@", "@", true},
		{0, 0, "/run/moat.sock", "192.0.2.1", false},
	}
	for _, tt := range tests {
		b, _ := newTestBans(BanOptions{Threshold: 1, IPv4Prefix: tt.v4, IPv6Prefix: tt.v6})
		if got := b.network(tt.a) == b.network(tt.b); got != tt.same {
			t.Errorf("/%d,/%d: %s (%s) and %s (%s) same network = %v, want %v",
				tt.v4, tt.v6, tt.a, b.network(tt.a), tt.b, b.network(tt.b), got, tt.same)
		}
	}
	// Failures from one /64 ban the user on every address of that /64.
	b, _ := newTestBans(BanOptions{Threshold: 3})
	for i := range 3 {
		verify(b, known(b, "alice", fmt.Sprintf("2001:db8:5:5::%x", i+1)), false)
	}
	if !b.banned(known(b, "alice", "2001:db8:5:5:abcd::1")) || b.banned(known(b, "alice", "2001:db8:5:6::1")) {
		t.Error("an IPv6 client was not banned by its /64")
	}
}

func TestBansCappedAndBounded(t *testing.T) {
	b, c := newTestBans(BanOptions{Threshold: 1, Base: time.Second, Max: 8 * time.Second, MaxEntries: 100})
	for range 50 {
		b.fail(known(b, "alice", "192.0.2.1"))
	}
	c.advance(8*time.Second + time.Millisecond)
	if b.banned(known(b, "alice", "192.0.2.1")) {
		t.Fatal("a ban outlasted ban_time_max")
	}
	for i := range 10000 {
		c.advance(time.Millisecond)
		a := known(b, fmt.Sprint("u", i), fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
		verify(b, a, i%2 == 0)
	}
	if n := b.len(); n > 200 {
		t.Fatalf("%d entries held, bound 100 + 100", n)
	}
}

func TestBansDisabled(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 0})
	for range 100 {
		b.fail(known(b, "alice", "192.0.2.1"))
		verify(b, known(b, "alice", "192.0.2.1"), false)
	}
	if b.banned(known(b, "alice", "192.0.2.1")) || len(b.entries) != 0 {
		t.Fatal("ban_threshold 0 must disable bans")
	}
	// The concurrency caps still hold.
	for i := range DefaultUserConcurrency {
		a := known(b, "alice", fmt.Sprintf("192.0.2.%d", 10+i))
		if b.begin(&a) != admitted {
			t.Fatal("refused under the cap")
		}
	}
	a := known(b, "alice", "192.0.2.200")
	if v := b.begin(&a); v != refusedBusy {
		t.Errorf("verification past the per-user cap: %d, want busy", v)
	}
	// ...except where alice logged in before.
	b.succeed(known(b, "alice", "198.51.100.1"))
	a = known(b, "alice", "198.51.100.1")
	if v := b.begin(&a); v != admitted {
		t.Errorf("alice where she logged in before, per-user cap full: %d, want admitted", v)
	}
	a = known(b, "bob", "192.0.2.201")
	if v := b.begin(&a); v != admitted {
		t.Errorf("bob refused while alice's cap is full: %d", v)
	}
}

// The README states the numbers the code uses.
func TestBanNumbersInREADME(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(data)), " ")
	b := newBans(BanOptions{Threshold: 5}, time.Now)
	for _, want := range []string{
		fmt.Sprintf("`ban_threshold` (%d) failures ban that user from that network only", b.opt.Threshold),
		fmt.Sprintf("%d × `ban_threshold` (%d) failures ban the network", NetworkFactor, NetworkFactor*b.opt.Threshold),
		fmt.Sprintf("%d × `ban_threshold` (%d) failures ban anonymous attempts", NetworkFactor, NetworkFactor*b.opt.Threshold),
		fmt.Sprintf("during the last %d days", int(DefaultTrustFor.Hours()/24)),
		fmt.Sprintf("A ban lasts %v s, doubles", b.opt.Base.Seconds()),
		fmt.Sprintf("at most %d password verifications run at once per network and %d per user", DefaultNetworkConcurrency, DefaultUserConcurrency),
		fmt.Sprintf("logged at most %d times per network in %v", refusalLogBurst, refusalLogWindow.Seconds()) + " s",
		"default /32", "default /64",
	} {
		if !strings.Contains(readme, want) {
			t.Errorf("README does not say %q", want)
		}
	}
}

// A verification that never ran (shutdown) releases its charge and
// counts no failure.
func TestBansAbortedVerificationReleases(t *testing.T) {
	b, _ := newTestBans(BanOptions{Threshold: 1})
	for range 100 {
		a := known(b, "alice", "192.0.2.9")
		if v := b.begin(&a); v != admitted {
			t.Fatalf("refused after aborted verifications: %d", v)
		}
		b.end(a, false)
	}
	if len(b.entries) != 0 || len(b.userBusy) != 0 {
		t.Fatalf("aborted verifications left %d entries, %d busy users", len(b.entries), len(b.userBusy))
	}
}
