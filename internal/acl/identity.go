package acl

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnsafeIdentity is wrapped by CheckIdentity's errors.
var ErrUnsafeIdentity = errors.New("unsafe identity for %u/%c patterns")

// CheckIdentity returns nil when a username or client id is safe to
// substitute into %u/%c patterns. It refuses an empty value, NUL, '/', '+',
// '#' and a leading '$': each lets a client reach or widen topics outside its
// own tree ("alice/evil" lands in alice's "alice/#"; "" turns "%u/#" into
// "/#"). Callers apply it at CONNECT when Rules.UsesPatterns is true.
func CheckIdentity(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty", ErrUnsafeIdentity)
	case strings.HasPrefix(s, "$"):
		return fmt.Errorf("%w: starts with '$'", ErrUnsafeIdentity)
	}
	if i := strings.IndexAny(s, "\x00/+#"); i >= 0 {
		if s[i] == 0 {
			return fmt.Errorf("%w: contains NUL", ErrUnsafeIdentity)
		}
		return fmt.Errorf("%w: contains '%c'", ErrUnsafeIdentity, s[i])
	}
	return nil
}
