package acl

import (
	"fmt"
	"strings"
)

// Client is who asks. HasUsername distinguishes "no username" (anonymous
// section) from an empty one.
type Client struct {
	Username    string
	HasUsername bool
	ClientID    string
}

// Op is the kind of access checked.
type Op int

// The operations Explain understands.
const (
	OpRead      Op = iota // delivery of a concrete topic to the client
	OpWrite               // PUBLISH by the client (and its Will)
	OpSubscribe           // SUBSCRIBE to a filter
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpSubscribe:
		return "subscribe"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// why says what decided; kept as a small code so the hot path builds no text.
type why uint8

const (
	whyRule      why = iota // a rule decided
	whyNoMatch              // no rule decided
	whyNoRules              // the file has no rules
	whyNoClient             // nil client
	whyInvalid              // not a valid topic name / filter
	whySysWrite             // write to $SYS
	whyShare                // $share outside SUBSCRIBE
	whyDangerous            // '+'/'#' in username or client id with patterns in use
	whyNonStrict            // non-strict SUBSCRIBE: granted, delivery is filtered
)

// result is the outcome of one check; rule and section are set for whyRule.
type result struct {
	allow   bool
	why     why
	rule    *rule
	section string // "" anonymous, else the user name; pattern when isPat
	isPat   bool
}

// CanRead reports whether the client may receive a message on topic. It is
// the per-delivery check and does not allocate.
func (r *Rules) CanRead(c *Client, topic string) bool {
	return r.check(c, OpRead, topic, true).allow
}

// CanWrite reports whether the client may publish to topic.
func (r *Rules) CanWrite(c *Client, topic string) bool {
	return r.check(c, OpWrite, topic, true).allow
}

// CanSubscribe reports whether the client may subscribe to filter (which may
// carry a $share/<group>/ prefix). See the package doc for strict mode.
func (r *Rules) CanSubscribe(c *Client, filter string, strict bool) bool {
	return r.check(c, OpSubscribe, filter, strict).allow
}

func (r *Rules) check(c *Client, op Op, t string, strict bool) result {
	if c == nil {
		return result{why: whyNoClient}
	}
	switch op {
	case OpRead, OpWrite:
		if !ValidTopic(t) {
			return result{why: whyInvalid}
		}
		if strings.HasPrefix(t, "$share") {
			return result{why: whyShare}
		}
		if op == OpWrite && strings.HasPrefix(t, "$SYS") {
			return result{why: whySysWrite}
		}
	case OpSubscribe:
		f, ok := stripShare(t)
		if !ok || !ValidFilter(f) {
			return result{why: whyInvalid}
		}
		if !strict {
			return result{allow: true, why: whyNonStrict}
		}
		t = f
	default:
		return result{why: whyInvalid}
	}
	if r == nil || r.empty() {
		return result{why: whyNoRules}
	}
	need := accRead
	if op == OpWrite {
		need = accWrite
	}
	cover := op == OpSubscribe

	// 1. The client's own list.
	own, section := r.anon, ""
	if c.HasUsername {
		own, section = r.users[c.Username], c.Username
	}
	if own != nil {
		for i := range own.rules {
			ru := &own.rules[i]
			if !ru.test(cover, t, "", "") {
				continue
			}
			if ru.access == 0 || ru.access&need != 0 {
				return result{allow: ru.access != 0, why: whyRule, rule: ru, section: section}
			}
		}
	}
	if len(r.patterns) == 0 {
		return result{why: whyNoMatch}
	}
	// 2. Patterns, once identities that could widen a filter are ruled out.
	if (c.HasUsername && strings.ContainsAny(c.Username, "+#")) || strings.ContainsAny(c.ClientID, "+#") {
		return result{why: whyDangerous}
	}
	for i := range r.patterns {
		ru := &r.patterns[i]
		if ru.f.usesU && (!c.HasUsername || c.Username == "") {
			continue
		}
		if ru.f.usesC && c.ClientID == "" {
			continue
		}
		if !ru.test(cover, t, c.Username, c.ClientID) {
			continue
		}
		if ru.access == 0 || ru.access&need != 0 {
			return result{allow: ru.access != 0, why: whyRule, rule: ru, isPat: true}
		}
	}
	return result{why: whyNoMatch}
}

func (ru *rule) test(cover bool, t, u, c string) bool {
	if cover {
		return ru.f.covers(t, u, c)
	}
	return ru.f.match(t, u, c)
}

// stripShare removes a "$share/<group>/" prefix. ok is false for a malformed
// shared subscription (empty group, wildcard in the group, no filter).
func stripShare(s string) (string, bool) {
	rest, found := strings.CutPrefix(s, "$share/")
	if !found {
		return s, true
	}
	group, f, found := strings.Cut(rest, "/")
	if !found || group == "" || strings.ContainsAny(group, "+#") || f == "" {
		return "", false
	}
	return f, true
}

// Decision explains one check.
type Decision struct {
	Allow  bool
	File   string // set when a rule decided
	Line   int    // set when a rule decided
	Rule   string // the deciding line as written
	Reason string
}

func (d Decision) String() string {
	verdict := "deny"
	if d.Allow {
		verdict = "allow"
	}
	if d.Line > 0 {
		return fmt.Sprintf("%s: %s:%d: %s (%s)", verdict, d.File, d.Line, d.Rule, d.Reason)
	}
	return fmt.Sprintf("%s: %s", verdict, d.Reason)
}

// Explain runs the same check as CanRead, CanWrite or CanSubscribe and says
// which rule, or which special case, decided.
func (r *Rules) Explain(c *Client, op Op, topicOrFilter string, strict bool) Decision {
	res := r.check(c, op, topicOrFilter, strict)
	d := Decision{Allow: res.allow}
	switch res.why {
	case whyRule:
		d.File, d.Line, d.Rule = r.name, res.rule.line, res.rule.text
		where := "anonymous section"
		switch {
		case res.isPat:
			where = "pattern"
		case c.HasUsername:
			where = fmt.Sprintf("user %q section", res.section)
		}
		d.Reason = fmt.Sprintf("%s decides %s: %s", where, op, accessWord(res.rule.access))
		if op == OpSubscribe {
			d.Reason += " (rule covers the filter)"
		}
	case whyNoMatch:
		d.Reason = "no rule matched: deny"
	case whyNoRules:
		d.Reason = "the aclfile has no rules: everything is denied"
	case whyNoClient:
		d.Reason = "no client"
	case whyInvalid:
		d.Reason = "not a valid topic name"
		if op == OpSubscribe {
			d.Reason = "not a valid topic filter or shared subscription"
		}
	case whySysWrite:
		d.Reason = "$SYS topics are never writable by clients"
	case whyShare:
		d.Reason = "$share topics are only valid in SUBSCRIBE"
	case whyDangerous:
		d.Reason = "username or client id contains '+' or '#' and the aclfile has patterns: everything is denied"
	case whyNonStrict:
		d.Reason = "non-strict subscribe: any valid filter is granted; each delivery is checked for read"
	}
	return d
}

func accessWord(a uint8) string {
	switch a {
	case 0:
		return "deny"
	case accRead:
		return "read"
	case accWrite:
		return "write"
	}
	return "readwrite"
}
