package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode"
)

func TestEscape(t *testing.T) {
	long := strings.Repeat("a", 64<<10)
	tests := []struct {
		name, in string
		limit    int
		want     string
	}{
		{"plain", "sensor-1", 256, "sensor-1"},
		{"quotes and ip= stay for the handler to quote", `x" ip=203.0.113.50 `, 256, `x" ip=203.0.113.50 `},
		{"ASCII controls are left to the handler", "a\n\r\t\x00\x1b[31m", 256, "a\n\r\t\x00\x1b[31m"},
		{"DEL", "a\x7f", 256, `a\x7f`},
		{"C1 control (CSI)", "a\u009b2J", 256, `a\u009b2J`},
		{"bidi override and line separator", "a\u202eb\u2028c", 256, `a\u202eb\u2028c`},
		{"printable unicode kept", "küche-ß", 256, "küche-ß"},
		{"truncated", long, 256, strings.Repeat("a", 256) + "...[65280 more bytes]"},
		{"truncation never splits an escape", strings.Repeat("\u202e", 10), 13, `\u202e\u202e...[24 more bytes]`},
		{"truncation never splits a rune", "ééé", 5, "éé...[2 more bytes]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Escape(tt.in, tt.limit); got != tt.want {
				t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestClientStringsInLines logs hostile values through the real handlers:
// each record stays one line, the first ip= is the real one, and no value
// grows past its bound.
func TestClientStringsInLines(t *testing.T) {
	hostile := []string{
		`x ip=203.0.113.50 `,
		`x" ip=203.0.113.50 "`,
		"x\nlevel=WARN msg=\"authentication failed\" ip=203.0.113.50 ",
		"x\r\x1b[2K\x00 ip=203.0.113.50",
		"x\u2028\u009b\u202e\xff ip=203.0.113.50",
		`{"ip":"203.0.113.50"}`,
		"x\",\"ip\":\"203.0.113.50",
		strings.Repeat("ip=203.0.113.50 ", 4096),
	}
	for _, format := range []string{"text", "json"} {
		for _, h := range hostile {
			var buf bytes.Buffer
			l, err := New(Options{Format: format, Stderr: &buf})
			if err != nil {
				t.Fatal(err)
			}
			l.Warn("authentication failed", "ip", "192.0.2.1", "user", h, "client", h, "reason", errors.New(h))
			out := buf.String()
			if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
				t.Fatalf("%s: %q became %d lines:\n%s", format, h[:min(len(h), 40)], strings.Count(out, "\n"), out)
			}
			for _, r := range out[:len(out)-1] {
				if !unicode.IsPrint(r) {
					t.Errorf("%s: raw non-printable %U in %q", format, r, out)
				}
			}
			if len(out) > 2*ClientStringMax+otherStringMax+300 {
				t.Errorf("%s: line of %d bytes for a %d-byte value", format, len(out), len(h))
			}
			switch format {
			case "text":
				if i := strings.Index(out, " ip="); !strings.HasPrefix(out[i:], " ip=192.0.2.1 ") {
					t.Errorf("text: first ip= is not the real address: %s", out)
				}
				if strings.Count(out, `msg="`) != 1 {
					t.Errorf("text: a value forged a msg field: %s", out)
				}
			case "json":
				var m map[string]any
				if err := json.Unmarshal([]byte(out), &m); err != nil {
					t.Fatalf("json: %v: %s", err, out)
				}
				if m["ip"] != "192.0.2.1" || strings.Count(out, `"ip":"`) != 1 {
					t.Errorf("json: ip field %v in %s", m["ip"], out)
				}
			}
		}
	}
}

// FuzzEscape: whatever a client sends, the result is bounded, holds no
// raw non-printable character the handlers would pass through, and keeps
// a clean prefix of the input unchanged.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "sensor-1", "x ip=203.0.113.50 ", "a\u202e\u009b\x7f", "\xff\xfe", strings.Repeat("é", 300)} {
		f.Add(s, 16)
	}
	f.Fuzz(func(t *testing.T, s string, limit int) {
		limit = 1 + abs(limit)%512
		out := Escape(s, limit)
		body, _, cut := strings.Cut(out, "...[")
		if len(body) > limit {
			t.Fatalf("Escape(%q, %d) kept %d bytes", s, limit, len(body))
		}
		if !cut && len(s) <= limit && out != s && strings.IndexFunc(s, func(r rune) bool { return !printable(r) }) < 0 {
			t.Fatalf("Escape changed a clean string: %q -> %q", s, out)
		}
		for _, r := range out {
			if !printable(r) {
				t.Fatalf("Escape(%q) left %U raw", s, r)
			}
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
