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

// CheckClient applies CheckIdentity to the parts of c that the file's
// patterns substitute: the username when a pattern uses %u (and c has one),
// the client id when a pattern uses %c. Without patterns it returns nil.
func (r *Rules) CheckClient(c *Client) error {
	if r == nil || c == nil || !r.UsesPatterns() {
		return nil
	}
	if r.stats.UsesUsername && c.HasUsername {
		if err := CheckIdentity(c.Username); err != nil {
			return fmt.Errorf("username: %w", err)
		}
	}
	if r.stats.UsesClientID {
		if err := CheckIdentity(c.ClientID); err != nil {
			return fmt.Errorf("client id: %w", err)
		}
	}
	return nil
}
