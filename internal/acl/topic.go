package acl

import (
	"strings"
	"unicode/utf8"
)

// maxTopicLen is the MQTT limit on a UTF-8 encoded string.
const maxTopicLen = 65535

// ValidTopic reports whether s is a valid MQTT topic name for PUBLISH:
// 1..65535 bytes of valid UTF-8, no NUL, no wildcard characters.
func ValidTopic(s string) bool {
	if len(s) == 0 || len(s) > maxTopicLen {
		return false
	}
	if strings.IndexByte(s, 0) >= 0 || strings.ContainsAny(s, "+#") {
		return false
	}
	return utf8.ValidString(s)
}

// ValidFilter reports whether s is a valid MQTT topic filter: 1..65535 bytes
// of valid UTF-8, no NUL, '+' only as a whole level, '#' only as the whole
// last level.
func ValidFilter(s string) bool {
	if len(s) == 0 || len(s) > maxTopicLen {
		return false
	}
	if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '+':
			if (i > 0 && s[i-1] != '/') || (i+1 < len(s) && s[i+1] != '/') {
				return false
			}
		case '#':
			if (i > 0 && s[i-1] != '/') || i+1 != len(s) {
				return false
			}
		}
	}
	return true
}

// Segment kinds of a compiled filter level.
const (
	segLit = iota
	segUser
	segClient
)

type seg struct {
	kind uint8
	lit  string
}

// level is one '/'-separated level of a filter as written. wild is '+' or
// '#' for a wildcard level, 0 for text made of segments. A substituted %u or
// %c value may itself contain '/', so one written level can cover several
// topic levels; it is compared byte for byte and is never a wildcard.
type level struct {
	wild byte
	segs []seg
}

// filter is a compiled rule filter. It is immutable once built.
type filter struct {
	dollar bool // written text starts with '$'
	levels []level
	usesU  bool
	usesC  bool
}

// compileFilter compiles a valid filter. With subst, "%u" and "%c" become
// substitution segments (mosquitto scans left to right, so "%%u" is "%"
// followed by the username).
func compileFilter(s string, subst bool) filter {
	f := filter{dollar: strings.HasPrefix(s, "$")}
	for lv := range strings.SplitSeq(s, "/") {
		switch lv {
		case "+", "#":
			f.levels = append(f.levels, level{wild: lv[0]})
			continue
		}
		var l level
		start := 0
		for i := 0; subst && i+1 < len(lv); i++ {
			if lv[i] != '%' || (lv[i+1] != 'u' && lv[i+1] != 'c') {
				continue
			}
			if i > start {
				l.segs = append(l.segs, seg{kind: segLit, lit: lv[start:i]})
			}
			if lv[i+1] == 'u' {
				l.segs = append(l.segs, seg{kind: segUser})
				f.usesU = true
			} else {
				l.segs = append(l.segs, seg{kind: segClient})
				f.usesC = true
			}
			i++
			start = i + 1
		}
		if start < len(lv) || len(l.segs) == 0 {
			l.segs = append(l.segs, seg{kind: segLit, lit: lv[start:]})
		}
		f.levels = append(f.levels, l)
	}
	return f
}

func (s *seg) value(u, c string) string {
	switch s.kind {
	case segUser:
		return u
	case segClient:
		return c
	}
	return s.lit
}

// eatText consumes the text of a non-wildcard level from s at position p and
// returns the position after it, or -1 when s does not continue with it.
func (l *level) eatText(s string, p int, u, c string) int {
	for i := range l.segs {
		v := l.segs[i].value(u, c)
		if !strings.HasPrefix(s[p:], v) {
			return -1
		}
		p += len(v)
	}
	return p
}

// nextLevel returns the start of the level after the one ending at p (which
// must be len(s) or a '/'), using len(s)+1 for "no more levels"; -1 when p
// is not at a level boundary.
func nextLevel(s string, p int) int {
	if p == len(s) {
		return p + 1
	}
	if s[p] == '/' {
		return p + 1
	}
	return -1
}

// match reports whether topic (a valid topic name) matches the filter with
// u and c substituted. It does not allocate.
func (f *filter) match(topic, u, c string) bool {
	if len(topic) > 0 && topic[0] == '$' && !f.dollar {
		return false
	}
	p := 0 // start of the current topic level; len(topic)+1 when none is left
	for i := range f.levels {
		l := &f.levels[i]
		if l.wild == '#' {
			return true // '#' also matches the parent level itself
		}
		if p > len(topic) {
			return false
		}
		if l.wild == '+' {
			if j := strings.IndexByte(topic[p:], '/'); j >= 0 {
				p += j + 1
			} else {
				p = len(topic) + 1
			}
			continue
		}
		q := l.eatText(topic, p, u, c)
		if q < 0 {
			return false
		}
		if p = nextLevel(topic, q); p < 0 {
			return false
		}
	}
	return p > len(topic)
}

// covers reports whether every topic matched by sub (a valid filter) is
// matched by f with u and c substituted. It does not allocate.
func (f *filter) covers(sub, u, c string) bool {
	if len(sub) > 0 && sub[0] == '$' && !f.dollar {
		return false
	}
	p := 0
	for i := range f.levels {
		l := &f.levels[i]
		if l.wild == '#' {
			return true
		}
		if p > len(sub) {
			return false
		}
		end := strings.IndexByte(sub[p:], '/')
		if end < 0 {
			end = len(sub)
		} else {
			end += p
		}
		if l.wild == '+' {
			if sub[p:end] == "#" {
				return false
			}
			p = end + 1
			continue
		}
		q := l.eatText(sub, p, u, c)
		if q < 0 || strings.ContainsAny(sub[p:q], "+#") {
			return false // a wildcard in sub is never covered by text
		}
		if p = nextLevel(sub, q); p < 0 {
			return false
		}
	}
	return p > len(sub)
}

// FilterMatches reports whether the topic name matches the filter under MQTT
// rules (a filter starting with a wildcard never matches a '$' topic). Both
// must be valid; otherwise the answer is false.
func FilterMatches(filterText, topic string) bool {
	if !ValidFilter(filterText) || !ValidTopic(topic) {
		return false
	}
	f := compileFilter(filterText, false)
	return f.match(topic, "", "")
}

// FilterCovers reports whether subscription filter sub is contained in rule:
// every topic that sub matches is also matched by rule. "alice/+/temp" is
// covered by "alice/#"; "#" and "+/x" are not. Both must be valid filters.
func FilterCovers(rule, sub string) bool {
	if !ValidFilter(rule) || !ValidFilter(sub) {
		return false
	}
	f := compileFilter(rule, false)
	return f.covers(sub, "", "")
}
