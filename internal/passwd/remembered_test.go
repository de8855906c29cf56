package passwd

import (
	"context"
	"testing"
)

// Remembered answers from the cache only: never true for a password that
// was not verified, or for a changed entry, and never hashes.
func TestVerifierRemembered(t *testing.T) {
	f1, _ := Parse("f", []byte("a:"+testHash(t, "one")+"\n"))
	f2, _ := Parse("f", []byte("a:"+testHash(t, "two")+"\n"))
	v := NewVerifier(1, 4)
	tests := []struct {
		name      string
		f         *File
		user, pw  string
		verify    bool // run a full verification first
		remembers bool
	}{
		{"never verified", f1, "a", "one", false, false},
		{"verified", f1, "a", "one", true, true},
		{"wrong password", f1, "a", "onex", false, false},
		{"wrong password after a verification", f1, "a", "onex", true, false},
		{"unknown user", f1, "b", "one", false, false},
		{"changed entry", f2, "a", "one", false, false},
		{"nil file", nil, "a", "one", false, false},
	}
	for _, tt := range tests {
		if tt.verify {
			_, _ = v.Verify(context.Background(), tt.f, tt.user, []byte(tt.pw))
		}
		before := v.Stats().Computed
		if got := v.Remembered(tt.f, tt.user, []byte(tt.pw)); got != tt.remembers {
			t.Errorf("%s: Remembered = %v, want %v", tt.name, got, tt.remembers)
		}
		if v.Stats().Computed != before {
			t.Errorf("%s: Remembered hashed", tt.name)
		}
	}
	if NewVerifier(1, 0).Remembered(f1, "a", []byte("one")) {
		t.Error("a verifier without a cache remembered a password")
	}
}
