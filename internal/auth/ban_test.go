package auth

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestBansPerUserAndAddress(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	b := newBans(BanOptions{Threshold: 3, Base: 2 * time.Second, Max: 16 * time.Second}, c.now)
	steps := []struct {
		do         string // fail, ok, wait
		user, ip   string
		wait       time.Duration
		wantBanned map[[2]string]bool
	}{
		{do: "fail", user: "alice", ip: "a"},
		{do: "fail", user: "alice", ip: "a"},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "a"}: false}},
		{do: "fail", user: "alice", ip: "a"}, // third: banned for 2 s
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "a"}: true, {"alice", "b"}: false, {"bob", "a"}: false}},
		{do: "wait", wait: 2100 * time.Millisecond},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "a"}: false}},
		{do: "fail", user: "alice", ip: "a"}, // fourth: 4 s
		{do: "wait", wait: 3 * time.Second},
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "a"}: true}},
		{do: "wait", wait: 1100 * time.Millisecond},
		{do: "ok", user: "alice", ip: "a"},
		{do: "fail", user: "alice", ip: "a"}, // counting starts again after a success
		{do: "check", wantBanned: map[[2]string]bool{{"alice", "a"}: false}},
	}
	for i, s := range steps {
		switch s.do {
		case "fail":
			b.fail(s.user, s.ip)
		case "ok":
			b.succeed(s.user, s.ip)
		case "wait":
			c.advance(s.wait)
		case "check":
			for k, want := range s.wantBanned {
				if got := b.banned(k[0], k[1]); got != want {
					t.Fatalf("step %d: banned(%s, %s) = %v, want %v", i, k[0], k[1], got, want)
				}
			}
		}
	}
}

func TestBansWholeAddressAfterManyUsers(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	b := newBans(BanOptions{Threshold: 3, Base: time.Second, Max: time.Minute}, c.now)
	// 12 failures spread over many usernames (4x the threshold) ban the address.
	for i := 0; i < 12; i++ {
		b.fail(fmt.Sprintf("user%d", i), "nat")
	}
	if !b.banned("someone-else", "nat") {
		t.Fatal("the address is not banned after 4x the threshold")
	}
	if b.banned("someone-else", "other") {
		t.Fatal("another address is banned")
	}
}

func TestBansCappedAndBounded(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	b := newBans(BanOptions{Threshold: 1, Base: time.Second, Max: 8 * time.Second, MaxEntries: 100}, c.now)
	for i := 0; i < 50; i++ {
		b.fail("alice", "a")
	}
	c.advance(8*time.Second + time.Millisecond)
	if b.banned("alice", "a") {
		t.Fatal("a ban outlasted ban_time_max")
	}
	for i := 0; i < 10000; i++ {
		c.advance(time.Millisecond)
		b.fail(fmt.Sprint("u", i), fmt.Sprint("ip", i))
	}
	if n := b.len(); n > 100 {
		t.Fatalf("%d entries held, bound 100", n)
	}
}

func TestBansDisabled(t *testing.T) {
	b := newBans(BanOptions{Threshold: 0}, time.Now)
	for i := 0; i < 100; i++ {
		b.fail("alice", "a")
	}
	if b.banned("alice", "a") || b.len() != 0 {
		t.Fatal("ban_threshold 0 must disable bans")
	}
}
