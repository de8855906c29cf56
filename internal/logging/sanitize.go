package logging

import (
	"fmt"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what one attribute may add to a line. A client id, username
// or topic can be 64 KiB; logged whole, a few hundred refused CONNECTs
// write megabytes.
const (
	// ClientStringMax bounds attributes that carry client-supplied text.
	ClientStringMax = 256
	// otherStringMax bounds every other string or error attribute
	// (mochi's errors and packets can embed client data too).
	otherStringMax = 1024
)

// clientKeys are the attribute keys whose values a client chose (or a
// proxy header named), in Moat's and in mochi's log lines.
var clientKeys = map[string]bool{
	"client": true, "user": true, "username": true, "topic": true, "filter": true,
	"ip": true, "remote": true, "old_remote": true, "new_remote": true, "origin": true,
}

// ClientKey reports whether values logged under key are treated as
// client-supplied (escaped and cut at ClientStringMax).
func ClientKey(key string) bool { return clientKeys[key] }

// sanitize escapes and truncates string and error values. Both handlers
// escape quotes, ASCII control characters (line breaks, ESC) and invalid
// UTF-8, and the text handler quotes a value that holds a space, '=' or
// '"'; sanitize escapes the non-printable characters the JSON handler
// would write raw (DEL, C1 controls such as CSI, bidirectional overrides),
// so no attribute can start a new line, move the terminal's cursor or pass
// for another field.
func sanitize(a slog.Attr) slog.Attr {
	limit := otherStringMax
	if clientKeys[a.Key] {
		limit = ClientStringMax
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, Escape(v.String(), limit))
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, Escape(x.Error(), limit))
		case []byte:
			return slog.String(a.Key, Escape(string(x), limit))
		case fmt.Stringer:
			return slog.String(a.Key, Escape(x.String(), limit))
		}
	}
	return a
}

// Escape returns s with every non-printable character at or above DEL
// written as a Go escape (\x7f, \u202e) and cut to at most limit bytes,
// followed by a marker saying how many bytes of s were left out. ASCII
// control characters and invalid UTF-8 are left for the handler, which
// escapes them.
func Escape(s string, limit int) string {
	clean := true
	for _, r := range s {
		if !printable(r) {
			clean = false
			break
		}
	}
	if clean && len(s) <= limit {
		return s
	}
	var b strings.Builder
	b.Grow(min(len(s), limit) + 32)
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case !printable(r) && r == 0x7f:
			piece = `\x7f`
		case !printable(r):
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = s[i : i+size]
		}
		if b.Len()+len(piece) > limit {
			fmt.Fprintf(&b, "...[%d more bytes]", len(s)-i)
			return b.String()
		}
		b.WriteString(piece)
		i += size
	}
	return b.String()
}

// printable: what may stay as it is. ASCII controls and invalid UTF-8
// (RuneError) count as printable here because the handlers escape them.
func printable(r rune) bool {
	return r < 0x7f || r == utf8.RuneError || unicode.IsPrint(r)
}
