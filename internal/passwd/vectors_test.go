package passwd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vectorDir holds files written and checked by mosquitto 2.0.11; its README
// gives every password and what the broker does with each entry.
const vectorDir = "testdata/mosquitto"

func readVector(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(vectorDir, name))
	if err != nil {
		t.Fatalf("mosquitto test vectors: %v", err)
	}
	return data
}

// withoutLines blanks the given 1-based lines, keeping the numbering.
func withoutLines(data []byte, drop ...int) []byte {
	lines := strings.Split(string(data), "\n")
	for _, n := range drop {
		lines[n-1] = ""
	}
	return []byte(strings.Join(lines, "\n"))
}

func TestMosquittoVectors(t *testing.T) {
	edge := readVector(t, "passwd-edge")
	tests := []struct {
		name  string
		data  []byte
		users map[string]string // user -> password that must verify
	}{
		{"passwd-7", readVector(t, "passwd-7"), map[string]string{
			"alice": "alice-pass", "bob": "b0b:with$pecial #chars", "carol": "correct horse battery staple"}},
		{"passwd-6", readVector(t, "passwd-6"), map[string]string{
			"alice": "alice-pass", "bob": "b0b:with$pecial #chars", "carol": "correct horse battery staple"}},
		// passwd-edge without frank (plaintext) and the first ivan: every entry
		// mosquitto 2.0 accepts, plus erin's 2.1 format (64-byte salt, 210000 rounds).
		{"passwd-edge accepted entries", withoutLines(edge, 4, 7), map[string]string{
			"dave": "dave-pass", "erin": "erin-pass", "grace": "grace-pass", "heidi": "heidi-pass", "ivan": "ivan-two"}},
		{"passwd-edge first ivan", withoutLines(edge, 4, 8), map[string]string{"ivan": "ivan-one"}},
	}
	v := NewVerifier(2, 0)
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse(tt.name, tt.data)
			if err != nil {
				t.Fatal(err)
			}
			if f.Len() < len(tt.users) {
				t.Fatalf("Len = %d, want at least %d", f.Len(), len(tt.users))
			}
			for user, pw := range tt.users {
				if ok, err := v.Verify(ctx, f, user, []byte(pw)); !ok || err != nil {
					t.Errorf("%s: right password refused (err %v)", user, err)
				}
				if ok, _ := v.Verify(ctx, f, user, []byte(pw+"x")); ok {
					t.Errorf("%s: wrong password accepted", user)
				}
			}
		})
	}
}

// The whole passwd-edge file is refused: frank's plaintext entry (line 4) and
// ivan's duplicate (line 8) are errors, where mosquitto drops them silently.
func TestMosquittoEdgeFileRefused(t *testing.T) {
	f, err := Parse("passwd-edge", readVector(t, "passwd-edge"))
	if f != nil || err == nil {
		t.Fatalf("Parse = %v, %v; want nil File and an error", f, err)
	}
	lines := lineErrors(err)
	if len(lines) != 2 || lines[0].Line != 4 || lines[1].Line != 8 {
		t.Fatalf("errors at %v, want lines 4 and 8:\n%v", lines, err)
	}
	msg := err.Error()
	for _, want := range []string{"passwd passwd-edge:4: not a password hash", "passwd passwd-edge:8: duplicate user \"ivan\" (first defined at line 7)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "plaintext-pass") {
		t.Errorf("error quotes the plaintext password:\n%s", msg)
	}
}

func lineErrors(err error) []*LineError {
	var out []*LineError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			var le *LineError
			if errors.As(e, &le) {
				out = append(out, le)
			}
		}
	}
	return out
}
