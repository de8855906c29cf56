// Package auth is Moat's single authentication and authorisation hook for
// mochi: CONNECT checks (password, bans, Will topic, client-id ownership,
// identity hygiene, keepalive cap), ACL checks on publish, subscribe and
// every delivery, and reloads that swap the whole policy at once.
//
// It denies by default: a client is allowed only when this hook approved
// it, and no other permissive hook may be registered beside it (mochi ORs
// OnConnectAuthenticate and OnACLCheck across hooks).
package auth

import (
	"strings"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// Scope is the authentication of one listener (or of all of them, without
// per_listener_settings).
type Scope struct {
	// Passwd verifies usernames; nil means no password file, and then a
	// client that presents a username is refused: nothing could verify it.
	Passwd *passwd.File
	// ACL decides topics; nil means no acl_file: every authenticated client
	// may use every non-$ topic, as mosquitto does without an ACL.
	ACL            *acl.Rules
	AllowAnonymous bool
}

// Policy is an immutable snapshot of everything the hook decides with. A
// reload builds a new Policy and swaps it in one step.
type Policy struct {
	// Scopes maps a listener id to its scope; Default applies to listeners
	// not in the map.
	Scopes  map[string]*Scope
	Default *Scope
	// StrictSubscribe refuses filters not covered by a read rule.
	StrictSubscribe bool
	// MaxKeepalive caps client keepalives; keepalive 0 becomes this value.
	MaxKeepalive uint16
	// MessageSizeLimit drops larger payloads (0 = none).
	MessageSizeLimit uint32
	// UseUsernameAsClientID replaces client ids by usernames.
	UseUsernameAsClientID bool
}

func (p *Policy) scope(listener string) *Scope {
	if s, ok := p.Scopes[listener]; ok {
		return s
	}
	return p.Default
}

// usesPatterns reports whether identity hygiene applies: %u/%c
// substitution is only safe for names without topic syntax.
func (s *Scope) usesPatterns() bool {
	return s.ACL != nil && s.ACL.UsesPatterns()
}

// unsafeIdentity reports whether %u/%c substitution makes the username or
// the client id unsafe: with patterns in use, names with topic syntax
// ('/', '+', '#', NUL) or empty ones are refused.
func (s *Scope) unsafeIdentity(c *acl.Client) (username, clientID bool) {
	if !s.usesPatterns() {
		return false, false
	}
	return c.HasUsername && acl.CheckIdentity(c.Username) != nil, acl.CheckIdentity(c.ClientID) != nil
}

// isSys: without an acl_file, $SYS is readable as in mosquitto.
func isSys(topic string) bool { return topic == "$SYS" || strings.HasPrefix(topic, "$SYS/") }

func (s *Scope) canRead(c *acl.Client, topic string) bool {
	if s.ACL == nil {
		return topic == "" || topic[0] != '$' || isSys(topic)
	}
	return s.ACL.CanRead(c, topic)
}

func (s *Scope) canWrite(c *acl.Client, topic string) bool {
	if s.ACL == nil {
		return topic == "" || topic[0] != '$'
	}
	return s.ACL.CanWrite(c, topic)
}

func (s *Scope) canSubscribe(c *acl.Client, filter string, strict bool) bool {
	if s.ACL == nil {
		f := filter
		if len(f) > 7 && f[:7] == "$share/" {
			return acl.ValidFilter(f)
		}
		return acl.ValidFilter(f) && (f == "" || f[0] != '$' || isSys(f))
	}
	return s.ACL.CanSubscribe(c, filter, strict)
}
