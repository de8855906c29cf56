package broker_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// writeCostlyPasswd replaces the password file with hashes as slow as
// real ones, and reloads, so a flood of verifications shows as delay.
func writeCostlyPasswd(t *testing.T, tb *testBroker, iterations int) {
	t.Helper()
	var b strings.Builder
	for _, u := range slices.Sorted(func(yield func(string) bool) {
		for u := range passwords {
			if !yield(u) {
				return
			}
		}
	}) {
		h, err := passwd.Hash([]byte(passwords[u]), "sha512-pbkdf2", iterations)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	writeFile(t, tb.passwd, b.String())
	if err := tb.b.Reload(); err != nil {
		t.Fatal(err)
	}
}

// flood sends n CONNECTs at once and returns how many got each CONNACK
// code (-1: no CONNACK).
func flood(t *testing.T, addr string, n int, mk func(i int) opts) map[int]int {
	t.Helper()
	start := make(chan struct{})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, ack, err := mqtttest.Dial(addr, mk(i).options())
			code := int(ack.ReasonCode)
			if err != nil {
				code = -1
			} else {
				_ = c.Close()
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return codes
}

// TestParallelGuessesAreNotHashed: 300 wrong passwords sent at once from
// one address cost at most ban_threshold verifications (each failed
// verification is one bad_credentials line); the excess is answered at
// once with the ban code, and a login from elsewhere meanwhile succeeds.
func TestParallelGuessesAreNotHashed(t *testing.T) {
	const threshold = 5
	tb := startBroker(t, setup{acl: tableBACL, conf: fmt.Sprintf("ban_threshold %d\n", threshold)})
	writeCostlyPasswd(t, tb, 50000)
	const attacker = "127.0.0.20"
	var codes map[int]int
	done := make(chan struct{})
	var elapsed time.Duration
	go func() {
		defer close(done)
		start := time.Now()
		defer func() { elapsed = time.Since(start) }()
		codes = flood(t, tb.addr, 300, func(i int) opts {
			return opts{v: 4, id: fmt.Sprint("guess", i), user: "alice", hasUser: true, pass: fmt.Sprint("guess", i), hasPass: true, keepalive: 30, local: attacker}
		})
	}()
	// A legitimate login from another address while the flood runs: once
	// the broker has answered a first guess.
	deadline := time.Now().Add(waitLong)
	for len(tb.logs.Lines("authentication failed", "ip="+attacker+" ")) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	o := as(5, "alice", "legit")
	o.local = "127.0.0.21"
	t0 := time.Now()
	connect(t, tb.addr, o).disconnect()
	delay := time.Since(t0)
	<-done
	hashed := len(tb.logs.Lines("authentication failed", "ip="+attacker+" ", "reason=bad_credentials"))
	t.Logf("300 parallel wrong passwords from one address: %d verified, CONNACK codes %v; login from elsewhere took %v", hashed, codes, delay.Round(time.Millisecond))
	// A first ban lasts 2 s and doubles: a machine slow enough for the
	// flood to outlast bans lets one more guess through as each ends.
	limit := threshold
	for d := 2 * time.Second; d < elapsed; d *= 2 {
		limit++
	}
	if hashed > limit {
		t.Errorf("%d of 300 parallel guesses were verified in %v, want at most %d", hashed, elapsed, limit)
	}
	if codes[5]+codes[3] != 300 {
		t.Errorf("CONNACK codes %v: every guess must be answered with 5 (refused) or 3 (banned)", codes)
	}
	if codes[3] < 300-limit {
		t.Errorf("only %d guesses answered with the ban code", codes[3])
	}
}

// TestAnonymousAttemptsDoNotLockOutNamedUsers: an old device connecting
// anonymously (refused) over and over from a house must not ban the
// named users who log in correctly from there, even for the first time.
func TestAnonymousAttemptsDoNotLockOutNamedUsers(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "ban_threshold 3\n"})
	const house = "127.0.0.30"
	for i := range 50 {
		o := anon(4, fmt.Sprint("old-device-", i))
		o.local = house
		c, ack := dial(t, tb.addr, o)
		if ack.ReasonCode != authRefused(4) && ack.ReasonCode != bannedCode(4) {
			t.Fatalf("anonymous attempt %d: CONNACK 0x%02x", i, ack.ReasonCode)
		}
		c.drop()
	}
	for _, u := range []string{"alice", "bob"} {
		o := as(5, u, u+"-house")
		o.local = house
		connect(t, tb.addr, o).disconnect()
	}
	// The old device itself is banned by now: if a ban ended meanwhile,
	// the first of two attempts renews it.
	var last time.Time
	for i := range 2 {
		o := anon(5, fmt.Sprint("old-device-again-", i))
		o.local = house
		c, ack := dial(t, tb.addr, o)
		c.drop()
		if i == 1 && ack.ReasonCode != bannedCode(5) && time.Since(last) < time.Second {
			t.Errorf("anonymous after 50 failures: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, bannedCode(5))
		}
		last = time.Now()
	}
}

// TestSprayBansOnlyStrangers: failures for names from one address (a
// spray) ban that address for names never seen there, but not a user
// who logged in from there before, nor anyone elsewhere; any number of
// guesses for alice from one address never bans alice elsewhere.
func TestSprayBansOnlyStrangers(t *testing.T) {
	const threshold = 3
	tb := startBroker(t, setup{acl: tableBACL, conf: fmt.Sprintf("ban_threshold %d\n", threshold)})
	const nat = "127.0.0.40"
	o := as(4, "bob", "bob-before")
	o.local = nat
	connect(t, tb.addr, o).disconnect()
	for i := range 40 {
		c, _ := dial(t, tb.addr, opts{v: 4, id: fmt.Sprint("spray", i), user: fmt.Sprint("user", i), hasUser: true, pass: "x", hasPass: true, local: nat})
		c.drop()
		c, _ = dial(t, tb.addr, opts{v: 4, id: fmt.Sprint("alice-guess", i), user: "alice", hasUser: true, pass: fmt.Sprint("x", i), hasPass: true, local: nat})
		c.drop()
	}
	// One more guess renews the network's ban if it has just ended.
	c, _ := dial(t, tb.addr, opts{v: 4, id: "spray-last", user: "user-last", hasUser: true, pass: "x", hasPass: true, local: nat})
	c.drop()
	last := time.Now()
	o = as(5, "admin", "admin-stranger")
	o.local = nat
	c, ack := dial(t, tb.addr, o)
	c.drop()
	if ack.ReasonCode != bannedCode(5) && time.Since(last) < time.Second {
		t.Errorf("a user never seen at the spraying address: CONNACK 0x%02x, want the ban code", ack.ReasonCode)
	}
	o = as(5, "bob", "bob-after")
	o.local = nat
	connect(t, tb.addr, o).disconnect()
	o = as(5, "alice", "alice-elsewhere")
	o.local = "127.0.0.41"
	connect(t, tb.addr, o).disconnect()
}

// wsDial connects to a WebSocket listener as a trusted proxy would,
// naming the client in CF-Connecting-IP.
func wsDial(t *testing.T, url, clientIP string, o opts) (*mqtttest.Client, byte) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: waitLong}
	hdr := http.Header{}
	hdr.Set("CF-Connecting-IP", clientIP)
	ws, resp, err := d.Dial(url, hdr)
	if err != nil {
		t.Fatalf("websocket %s: %v", url, err)
	}
	resp.Body.Close()
	c, ack, err := mqtttest.Connect(&mqtttest.WSConn{Conn: ws}, o.options())
	if err != nil {
		t.Fatalf("CONNECT as %s: %v", clientIP, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, ack.ReasonCode
}

// TestBansGroupIPv6ByPrefixBehindProxy: behind a trusted proxy the
// address that counts is CF-Connecting-IP, and an IPv6 client is banned
// by its /64: it cannot dodge the ban by changing its interface id. The
// proxy's own address and other /64s are not banned.
func TestBansGroupIPv6ByPrefixBehindProxy(t *testing.T) {
	const threshold = 3
	tb := startBroker(t, setup{acl: tableBACL, conf: fmt.Sprintf("ban_threshold %d\nlistener 0 127.0.0.1\nprotocol websockets\ntrusted_proxy 127.0.0.1\n", threshold)})
	url := "ws://" + tb.b.Addr("ws:127.0.0.1:0").String() + "/"
	for round := 0; ; round++ {
		if round == 5 {
			t.Fatal("could not observe a ban within its 2 s lifetime in 5 rounds")
		}
		prefix := fmt.Sprintf("2001:db8:%x:1::", round+1)
		for i := range threshold {
			c, code := wsDial(t, url, fmt.Sprintf("%s%x", prefix, i+1), opts{v: 4, id: fmt.Sprint("ws-guess", i), user: "alice", hasUser: true, pass: "wrong", hasPass: true})
			if code != authRefused(4) {
				t.Fatalf("guess %d: CONNACK 0x%02x", i, code)
			}
			_ = c.Close()
		}
		last := time.Now()
		c, code := wsDial(t, url, prefix+"beef:1", as(4, "alice", "ws-same-64"))
		_ = c.Close()
		if code == bannedCode(4) {
			break
		}
		if time.Since(last) < time.Second {
			t.Fatalf("alice from another address of the same /64: CONNACK 0x%02x, want 0x%02x", code, bannedCode(4))
		}
	}
	c, code := wsDial(t, url, "2001:db8:ffff:2::1", as(4, "alice", "ws-other-64"))
	if code != 0 {
		t.Errorf("alice from another /64: CONNACK 0x%02x, want 0", code)
	}
	_ = c.Close()
	connect(t, tb.addr, as(4, "alice", "direct")).disconnect()
	if n := len(tb.logs.Lines("ban started", "network=2001:db8:")); n == 0 {
		t.Errorf("no ban line naming the /64:\n%s", tb.logs)
	}
}

// TestBannedFloodLogBounded: 300 refused CONNECTs from a banned address
// with 60 KiB client ids write a few truncated lines and one summary,
// not 300 x 60 KiB.
func TestBannedFloodLogBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "ban_threshold 2\nban_time_max 600\n"})
	const attacker = "127.0.0.60"
	for i := range 4 {
		c, _ := dial(t, tb.addr, opts{v: 4, id: fmt.Sprint("f", i), user: "alice", hasUser: true, pass: "wrong", hasPass: true, local: attacker})
		c.drop()
	}
	before := len(tb.logs.String())
	banned := 0
	for i := range 300 {
		id := fmt.Sprintf("%03d", i) + strings.Repeat("x", 60<<10)
		c, ack := dial(t, tb.addr, opts{v: 5, id: id, user: "alice", hasUser: true, pass: "wrong", hasPass: true, keepalive: 30, local: attacker})
		if ack.ReasonCode == bannedCode(5) {
			banned++
		}
		c.drop()
	}
	written := len(tb.logs.String()) - before
	t.Logf("300 refused CONNECTs (%d answered with the ban code) with 60 KiB client ids: %d bytes of log", banned, written)
	if banned < 290 {
		t.Fatalf("only %d of 300 attempts were banned", banned)
	}
	if written > 64<<10 {
		t.Errorf("%d bytes of log for 300 refusals", written)
	}
	deadline := time.Now().Add(waitLong + 10*time.Second)
	var summary []string
	for len(summary) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		summary = tb.logs.Lines("repeated refusals not logged", "network="+attacker+"/32", "suppressed=")
	}
	if len(summary) == 0 {
		tail := tb.logs.String()
		t.Fatalf("no summary of the suppressed lines; log ends:\n%s", tail[max(len(tail)-2000, 0):])
	}
	t.Logf("summary: %s", summary[0])
}
