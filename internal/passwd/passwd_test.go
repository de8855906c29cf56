package passwd

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Cheap hashes for tests, made once: $7$ at 10 rounds.
var (
	hashOnce sync.Once
	hashes   map[string]string // password -> $7$ hash
)

func testHash(t testing.TB, pw string) string {
	t.Helper()
	hashOnce.Do(func() { hashes = make(map[string]string) })
	if h, ok := hashes[pw]; ok {
		return h
	}
	h, err := Hash([]byte(pw), AlgPBKDF2, 10)
	if err != nil {
		t.Fatal(err)
	}
	hashes[pw] = h
	return h
}

func TestParse(t *testing.T) {
	h := testHash(t, "pw")
	h6, err := Hash([]byte("pw"), AlgSHA512, 0)
	if err != nil {
		t.Fatal(err)
	}
	salt12 := base64.StdEncoding.EncodeToString(make([]byte, 12))
	sum64 := base64.StdEncoding.EncodeToString(make([]byte, 64))
	tests := []struct {
		name    string
		data    string
		users   []string
		errLine int    // 0: no error
		errText string // part of the error
	}{
		{"empty", "", nil, 0, ""},
		{"comments and blanks", "# c\n\n   \n\t# indented\n", nil, 0, ""},
		{"one", "alice:" + h + "\n", []string{"alice"}, 0, ""},
		{"no final newline", "alice:" + h, []string{"alice"}, 0, ""},
		{"crlf and blanks", " alice \t: " + h + " \r\nbob:" + h6 + "\r\n", []string{"alice", "bob"}, 0, ""},
		{"utf-8 user", "jörg:" + h, []string{"jörg"}, 0, ""},
		{"64-byte salt", "a:$7$5$" + base64.StdEncoding.EncodeToString(make([]byte, 64)) + "$" + sum64, []string{"a"}, 0, ""},
		{"no colon", "# c\nalice\n", nil, 2, "no ':'"},
		{"plaintext", "alice:secret", nil, 1, "not a password hash"},
		{"second colon", "alice:" + h + ":x", nil, 1, "unexpected ':'"},
		{"empty user", ":" + h, nil, 1, "empty username"},
		{"empty hash", "alice:  ", nil, 1, "missing password hash"},
		{"control char user", "al\x01ice:" + h, nil, 1, "username contains a control character"},
		{"del user", "al\x7fice:" + h, nil, 1, "username contains a control character"},
		{"bad utf-8 user", "al\xffice:" + h, nil, 1, "username is not valid UTF-8"},
		{"duplicate", "a:" + h + "\nb:" + h + "\na:" + h, nil, 3, "duplicate user \"a\" (first defined at line 1)"},
		{"unknown type", "a:$5$" + salt12 + "$" + sum64, nil, 1, "unsupported hash type"},
		{"$6$ extra field", "a:$6$" + salt12 + "$" + sum64 + "$", nil, 1, "malformed $6$"},
		{"$7$ zero rounds", "a:$7$0$" + salt12 + "$" + sum64, nil, 1, "$7$ iteration count must be 1..10000000"},
		{"$7$ signed rounds", "a:$7$+5$" + salt12 + "$" + sum64, nil, 1, "$7$ iteration count must be 1..10000000"},
		{"$7$ huge rounds", "a:$7$99999999999$" + salt12 + "$" + sum64, nil, 1, "$7$ iteration count must be 1..10000000"},
		{"$7$ missing rounds", "a:$7$" + salt12 + "$" + sum64, nil, 1, "malformed $7$"},
		{"salt 16 bytes", "a:$7$5$" + base64.StdEncoding.EncodeToString(make([]byte, 16)) + "$" + sum64, nil, 1, "salt is 16 bytes"},
		{"hash 32 bytes", "a:$6$" + salt12 + "$" + base64.StdEncoding.EncodeToString(make([]byte, 32)), nil, 1, "hash is 32 bytes"},
		{"bad base64", "a:$6$" + salt12 + "$" + strings.Repeat("!", 88), nil, 1, "hash is not valid base64"},
		{"unpadded base64", "a:$6$" + salt12 + "$" + strings.TrimRight(sum64, "="), nil, 1, "hash is not valid base64"},
		{"argon2 v=16", "a:$argon2id$v=16$m=64,t=1,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "malformed $argon2id$"},
		{"argon2 order", "a:$argon2id$v=19$t=1,m=64,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "malformed $argon2id$"},
		{"argon2 memory", "a:$argon2id$v=19$m=4,t=1,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "argon2id m"},
		{"argon2 huge memory", "a:$argon2id$v=19$m=99999999,t=1,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "argon2id m"},
		{"argon2 time", "a:$argon2id$v=19$m=64,t=0,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "argon2id t"},
		{"argon2 short salt", "a:$argon2id$v=19$m=64,t=1,p=1$c2FsdA$" + strings.Repeat("A", 43), nil, 1, "argon2id salt is 4 bytes, want 8..64"},
		{"argon2i", "a:$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43), nil, 1, "unsupported hash type"},
		{"long hash", "a:$6$" + strings.Repeat("A", 600), nil, 1, "hash longer than"},
		{"long line", "a:" + strings.Repeat(" ", maxLineLen) + h, nil, 1, "line longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("pw.txt", []byte(tt.data))
			if tt.errLine == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Join(f.Users(), ","); got != strings.Join(tt.users, ",") {
					t.Fatalf("Users = %q, want %q", got, tt.users)
				}
				return
			}
			if f != nil || err == nil {
				t.Fatalf("Parse = %v, %v; want an error", f, err)
			}
			want := fmt.Sprintf("passwd pw.txt:%d: ", tt.errLine)
			if !strings.Contains(err.Error(), want+tt.errText) {
				t.Fatalf("error %q lacks %q", err, want+tt.errText)
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "AAAA") {
				t.Fatalf("error quotes line content: %q", err)
			}
		})
	}
}

func TestParseCollectsAllErrors(t *testing.T) {
	var b strings.Builder
	for i := range maxLineErrors + 5 {
		fmt.Fprintf(&b, "u%d:plain\n", i)
	}
	b.WriteString("ok:" + testHash(t, "pw") + "\n")
	_, err := Parse("f", []byte(b.String()))
	if n := len(lineErrors(err)); n != maxLineErrors {
		t.Fatalf("%d line errors, want %d", n, maxLineErrors)
	}
	for _, want := range []string{"5 more errors not shown", fmt.Sprintf("%d entries rejected", maxLineErrors+5)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
}

func TestFingerprint(t *testing.T) {
	h1, h2 := testHash(t, "one"), testHash(t, "two")
	f1, _ := Parse("f", []byte("a:"+h1+"\nb:"+h1))
	f2, _ := Parse("f", []byte("  a : "+h1+"\nb:"+h2))
	fa1, ok1 := f1.Fingerprint("a")
	fa2, ok2 := f2.Fingerprint("a")
	if !ok1 || !ok2 || fa1 != fa2 {
		t.Errorf("unchanged entry changed fingerprint: %q %q", fa1, fa2)
	}
	fb1, _ := f1.Fingerprint("b")
	fb2, _ := f2.Fingerprint("b")
	if fb1 == fb2 {
		t.Error("changed entry kept its fingerprint")
	}
	if fa1 == fb1 {
		t.Error("two users with the same hash share a fingerprint")
	}
	if strings.Contains(h1, fa1) {
		t.Error("fingerprint reveals the hash")
	}
	if _, ok := f1.Fingerprint("nobody"); ok {
		t.Error("fingerprint for an unknown user")
	}
}

func TestHashVectors(t *testing.T) {
	tests := []struct{ hash, pw string }{
		// phc-winner-argon2 reference test vector (src/test.c).
		{"$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", "password"},
		{"$6$zYPq0Q04/2vQmQ1q$EB7Rfxwk+3ZnfzR/zoNsucQrPsvViMV4qpD1c9EKpf14wB2W7+29ZH8pLofmfHjPSYdGCvm4x4ssxboLM6ub1Q==", "alice-pass"},
		{"$7$101$Sc6AmKHz+VTrJ6bt$iEhWIxROyUlb1T2yaXS21JdJOoRedTReyOAbRx/sAaXh6E3d8gTM8mVGlaGwK5kel7wOkS7dHIg/vGS7vQRgSA==", "alice-pass"},
	}
	for _, tt := range tests {
		h, err := parseHash(tt.hash)
		if err != nil {
			t.Fatalf("%s: %v", tt.hash, err)
		}
		if !h.verify([]byte(tt.pw)) || h.verify([]byte(tt.pw+"x")) {
			t.Errorf("%s: wrong verification", tt.hash)
		}
		if h.String() != tt.hash {
			t.Errorf("re-encoded as %s", h.String())
		}
	}
}

func TestHashRoundTrip(t *testing.T) {
	tests := []struct {
		alg    string
		iters  int
		prefix string
		kind   kind
		salt   int
	}{
		{"", 10, "$7$10$", kindPBKDF2, 12},
		{AlgPBKDF2, 1, "$7$1$", kindPBKDF2, 12},
		{AlgSHA512, 0, "$6$", kindSHA512, 12},
		{AlgArgon2id, 0, "$argon2id$v=19$m=47104,t=1,p=1$", kindArgon2id, 16},
		{AlgArgon2id, 2, "$argon2id$v=19$m=47104,t=2,p=1$", kindArgon2id, 16},
	}
	pw := []byte("b0b:with$pecial #chars")
	for _, tt := range tests {
		t.Run(tt.alg+fmt.Sprint(tt.iters), func(t *testing.T) {
			s, err := Hash(pw, tt.alg, tt.iters)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(s, tt.prefix) {
				t.Fatalf("%s lacks prefix %s", s, tt.prefix)
			}
			h, err := parseHash(s)
			if err != nil {
				t.Fatal(err)
			}
			if h.kind != tt.kind || len(h.salt) != tt.salt {
				t.Fatalf("kind %d salt %d bytes", h.kind, len(h.salt))
			}
			if !h.verify(pw) || h.verify(pw[1:]) {
				t.Fatal("round trip failed")
			}
			again, _ := Hash(pw, tt.alg, tt.iters)
			if again == s {
				t.Fatal("two hashes share a salt")
			}
		})
	}
}

// The default is what mosquitto 2.0 reads and OWASP asks for.
func TestHashDefault(t *testing.T) {
	s, err := Hash([]byte("pw"), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHash(s)
	if err != nil {
		t.Fatal(err)
	}
	if h.kind != kindPBKDF2 || h.iterations != 210000 || len(h.salt) != 12 || len(h.sum) != 64 {
		t.Fatalf("default hash %+v", h.params())
	}
	if !strings.HasPrefix(s, "$7$210000$") || !strings.HasSuffix(s, "==") {
		t.Fatalf("default hash %s", s)
	}
	if !h.verify([]byte("pw")) {
		t.Fatal("default hash does not verify")
	}
}

func TestHashErrors(t *testing.T) {
	for _, tc := range []struct {
		alg   string
		iters int
	}{{"md5", 0}, {AlgPBKDF2, maxIterations + 1}, {AlgArgon2id, maxArgonTime + 1}} {
		if _, err := Hash([]byte("pw"), tc.alg, tc.iters); err == nil {
			t.Errorf("Hash(%q, %d) succeeded", tc.alg, tc.iters)
		}
	}
}

func TestVerifierDummyForUnknownUser(t *testing.T) {
	h6, _ := Hash([]byte("x"), AlgSHA512, 0)
	h1000, _ := Hash([]byte("x"), AlgPBKDF2, 1000)
	// Two $7$/1000 entries against one $6$: the dummy must be $7$/1000.
	f, err := Parse("f", []byte("a:"+h1000+"\nb:"+h1000+"\nc:"+h6))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.dummy.params(), (params{kind: kindPBKDF2, iterations: 1000, saltLen: 12, keyLen: 64}); got != want {
		t.Fatalf("dummy params %+v, want %+v", got, want)
	}
	// On a tie the more expensive scheme wins.
	f2, _ := Parse("f", []byte("a:"+h1000+"\nc:"+h6))
	if f2.dummy.kind != kindPBKDF2 {
		t.Fatalf("tie picked kind %d", f2.dummy.kind)
	}
	empty, _ := Parse("f", nil)
	if empty.dummy.params() != defaultParams() {
		t.Fatalf("empty file dummy %+v", empty.dummy.params())
	}

	v := NewVerifier(1, 10)
	ctx := context.Background()
	for i, user := range []string{"nobody", "a", "", "A"} {
		ok, err := v.Verify(ctx, f, user, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		if ok != (user == "a") {
			t.Fatalf("%q: ok = %v", user, ok)
		}
		wantDummies := map[int]uint64{0: 1, 1: 1, 2: 2, 3: 3}[i]
		if s := v.Stats(); s.Dummies != wantDummies || s.Computed != uint64(i+1) {
			t.Fatalf("after %q: %+v, want %d dummies and %d computations", user, s, wantDummies, i+1)
		}
	}
	// A nil File rejects everyone after dummy work.
	if ok, err := NewVerifier(1, 0).Verify(ctx, nil, "a", []byte("x")); ok || err != nil {
		t.Fatalf("nil File: %v %v", ok, err)
	}
}

func TestVerifierCache(t *testing.T) {
	ctx := context.Background()
	f1, _ := Parse("f", []byte("a:"+testHash(t, "one")+"\nb:"+testHash(t, "bee")))
	v := NewVerifier(2, 2)
	verify := func(f *File, user, pw string, want bool, wantComputed uint64) {
		t.Helper()
		ok, err := v.Verify(ctx, f, user, []byte(pw))
		if err != nil || ok != want {
			t.Fatalf("Verify(%s, %s) = %v, %v; want %v", user, pw, ok, err, want)
		}
		if s := v.Stats(); s.Computed != wantComputed {
			t.Fatalf("Verify(%s, %s): %d computations, want %d", user, pw, s.Computed, wantComputed)
		}
	}
	verify(f1, "a", "one", true, 1)
	verify(f1, "a", "one", true, 1)   // cached
	verify(f1, "a", "onex", false, 2) // a wrong password is never cached
	verify(f1, "a", "onex", false, 3)
	verify(f1, "b", "one", false, 4) // the key includes the user

	// The entry changes to another password: the old one must fail at once.
	f2, _ := Parse("f", []byte("a:"+testHash(t, "two")+"\nb:"+testHash(t, "bee")))
	verify(f2, "a", "one", false, 5)
	verify(f2, "a", "two", true, 6)
	verify(f2, "a", "two", true, 6)
	// Same password, new hash (new salt or scheme): recomputed, not trusted from cache.
	h, _ := Hash([]byte("two"), AlgSHA512, 0)
	f3, _ := Parse("f", []byte("a:"+h))
	verify(f3, "a", "two", true, 7)
	// The user is gone: dummy work, false.
	f4, _ := Parse("f", []byte("b:"+testHash(t, "bee")))
	verify(f4, "a", "two", false, 8)

	// Bounded: three successes in a cache of two evict the least recent.
	verify(f2, "b", "bee", true, 9)
	if n := len(v.items); n != 2 || v.lru.Len() != 2 {
		t.Fatalf("cache holds %d/%d entries, want 2", n, v.lru.Len())
	}
	if s := v.Stats(); s.CacheHits != 2 {
		t.Fatalf("%d cache hits, want 2", s.CacheHits)
	}
	verify(f1, "a", "one", true, 10) // evicted earlier, computed again
}

func TestVerifierConcurrencyBound(t *testing.T) {
	const limit = 2
	h, err := Hash([]byte("pw"), AlgPBKDF2, 5000) // slow enough to overlap
	if err != nil {
		t.Fatal(err)
	}
	f, _ := Parse("f", []byte("a:"+h))
	v := NewVerifier(limit, 0)
	var wg sync.WaitGroup
	ctx := context.Background()
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := v.Verify(ctx, f, "a", []byte("pw")); !ok || err != nil {
				t.Errorf("Verify = %v, %v", ok, err)
			}
		}()
	}
	wg.Wait()
	if p := v.Stats().Peak; p < 1 || p > limit {
		t.Fatalf("%d verifications at once, limit %d", p, limit)
	}

	// All slots busy: a waiting Verify gives up when its context ends.
	for range limit {
		v.sem <- struct{}{}
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	ok, err := v.Verify(cctx, f, "a", []byte("pw"))
	if ok || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify with full semaphore = %v, %v; want DeadlineExceeded", ok, err)
	}
	cancelled, cancel2 := context.WithCancel(ctx)
	cancel2()
	if _, err := v.Verify(cancelled, f, "nobody", []byte("pw")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	if s := v.Stats(); s.Computed != 20 {
		t.Fatalf("%d computations, want 20 (none while blocked)", s.Computed)
	}
}
