package passwd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cheap reports whether verifying h is quick enough for a fuzz iteration.
func cheap(h *hashSpec) bool { return h.params().cost() <= 20000 }

func FuzzParse(f *testing.F) {
	for _, name := range []string{"passwd-6", "passwd-7", "passwd-edge"} {
		if data, err := os.ReadFile(filepath.Join(vectorDir, name)); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("# c\n\n a : $7$3$AAAAAAAAAAAAAAAA$" + strings.Repeat("A", 86) + "==\r\nb:plain\n"))
	f.Add([]byte("a:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$" + strings.Repeat("A", 43) + "\na:x"))
	v := NewVerifier(1, 4)
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz", data)
		if err != nil {
			if file != nil {
				t.Fatal("error with a non-nil File")
			}
			return
		}
		users := file.Users()
		if len(users) != file.Len() {
			t.Fatalf("Users %d, Len %d", len(users), file.Len())
		}
		for _, u := range users {
			if err := ValidateUsername(u); err != nil {
				t.Fatalf("parsed an invalid username: %v", err)
			}
			e := file.entries[u]
			// The stored hash string must decode to the same spec again.
			again, err := parseHash(e.hash)
			if err != nil || again.params() != e.spec.params() {
				t.Fatalf("hash does not re-parse: %v", err)
			}
			if !cheap(e.spec) {
				continue
			}
			// Verification is deterministic, and the cache agrees with it.
			pw := []byte(u)
			want := e.spec.verify(pw)
			for range 2 {
				got, err := v.Verify(context.Background(), file, u, pw)
				if err != nil || got != want {
					t.Fatalf("Verify = %v, %v; direct %v", got, err, want)
				}
			}
		}
	})
}

func FuzzParseHash(f *testing.F) {
	f.Add("$6$zYPq0Q04/2vQmQ1q$EB7Rfxwk+3ZnfzR/zoNsucQrPsvViMV4qpD1c9EKpf14wB2W7+29ZH8pLofmfHjPSYdGCvm4x4ssxboLM6ub1Q==")
	f.Add("$7$101$Sc6AmKHz+VTrJ6bt$iEhWIxROyUlb1T2yaXS21JdJOoRedTReyOAbRx/sAaXh6E3d8gTM8mVGlaGwK5kel7wOkS7dHIg/vGS7vQRgSA==")
	f.Add("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc")
	f.Add("$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ=$AAAAAAAAAAAAAAAAAAAAAA==")
	f.Add("$7$$$")
	f.Add("plain~text")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseHash(s)
		if err != nil {
			if h != nil {
				t.Fatal("error with a non-nil spec")
			}
			// Messages are constant text and numbers: an input with a byte they
			// never hold must not show up in them.
			if strings.ContainsFunc(s, func(r rune) bool { return r == '~' || r > 0x7e }) && strings.Contains(err.Error(), s) {
				t.Fatalf("error quotes its input: %v", err)
			}
			return
		}
		// What parses re-encodes canonically and parses to the same thing.
		enc := h.String()
		h2, err := parseHash(enc)
		if err != nil || h2.params() != h.params() || string(h2.salt) != string(h.salt) || string(h2.sum) != string(h.sum) {
			t.Fatalf("re-encoding %q does not round-trip: %v", enc, err)
		}
		if cheap(h) {
			if h.verify([]byte("x")) != h2.verify([]byte("x")) {
				t.Fatal("verification differs after re-encoding")
			}
			if got := h.compute([]byte("x")); len(got) != len(h.sum) {
				t.Fatalf("computed %d bytes, want %d", len(got), len(h.sum))
			}
		}
	})
}
