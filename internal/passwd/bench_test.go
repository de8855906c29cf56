package passwd

import (
	"context"
	"testing"
)

// BenchmarkVerify prints what one CONNECT's password check costs per scheme
// at the defaults Moat writes, and what a cached success costs.
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, alg string
		cache     int
	}{
		{"sha512", AlgSHA512, 0},
		{"pbkdf2-210000", AlgPBKDF2, 0},
		{"argon2id-46MiB", AlgArgon2id, 0},
		{"pbkdf2-210000-cached", AlgPBKDF2, 16},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h, err := Hash([]byte("pw"), tc.alg, 0)
			if err != nil {
				b.Fatal(err)
			}
			f, err := Parse("bench", []byte("u:"+h))
			if err != nil {
				b.Fatal(err)
			}
			v := NewVerifier(1, tc.cache)
			for b.Loop() {
				if ok, _ := v.Verify(ctx, f, "u", []byte("pw")); !ok {
					b.Fatal("refused")
				}
			}
		})
	}
}
