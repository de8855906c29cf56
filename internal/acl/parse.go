package acl

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

const (
	// maxLineLen caps one line: a maximal MQTT topic plus its keywords.
	maxLineLen = maxTopicLen + 64
	// maxFileSize caps what Load reads.
	maxFileSize = 64 << 20
	// maxErrors caps how many parse errors are collected.
	maxErrors = 100
)

// Access bits of a rule; a deny rule has none.
const (
	accRead  uint8 = 1
	accWrite uint8 = 2
)

// rule is one topic or pattern line.
type rule struct {
	access uint8
	line   int
	text   string // the line as written, without surrounding blanks
	f      filter
}

// list is a user's (or the anonymous section's) rules, deny rules first,
// each group in file order.
type list struct {
	rules []rule
}

// Rules is a parsed aclfile. It is immutable: callers swap whole snapshots.
type Rules struct {
	name     string
	anon     *list
	users    map[string]*list
	patterns []rule // deny first
	stats    Stats
}

// Stats counts what an aclfile holds.
type Stats struct {
	AnonymousRules int  // topic lines before the first user line
	Users          int  // distinct user sections with at least one topic line
	UserRules      int  // topic lines in user sections
	Patterns       int  // pattern lines
	UsesUsername   bool // a pattern uses %u
	UsesClientID   bool // a pattern uses %c
}

// Stats returns the counts of the file's rules.
func (r *Rules) Stats() Stats { return r.stats }

// UsesPatterns reports whether the file has pattern lines; then usernames and
// client ids take part in topic matching (see CheckIdentity).
func (r *Rules) UsesPatterns() bool { return len(r.patterns) > 0 }

// Name returns the file name the rules were parsed from.
func (r *Rules) Name() string { return r.name }

func (r *Rules) empty() bool {
	return r.anon == nil && len(r.users) == 0 && len(r.patterns) == 0
}

// Load reads and parses an aclfile. Warnings are returned even on success.
func Load(path string) (*Rules, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("aclfile: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("aclfile %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, nil, fmt.Errorf("aclfile %s: larger than %d bytes", path, maxFileSize)
	}
	return Parse(path, data)
}

// parser holds the state of one Parse call.
type parser struct {
	name     string
	r        *Rules
	user     string
	inUser   bool
	seen     map[string]int // user section name -> first line
	errs     []error
	warnings []string
}

// Parse parses aclfile data in mosquitto 2.0 syntax; name is used in
// messages. On any error it returns nil rules and every error found (joined),
// each as "aclfile NAME:LINE: reason". Warnings do not make it fail.
func Parse(name string, data []byte) (*Rules, []string, error) {
	p := &parser{
		name: name,
		r:    &Rules{name: name, users: map[string]*list{}},
		seen: map[string]int{},
	}
	for n := 1; len(data) > 0; n++ {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		if len(line) > maxLineLen {
			p.errorf(n, "line longer than %d bytes", maxLineLen)
			continue
		}
		p.parseLine(n, string(line))
		if len(p.errs) >= maxErrors {
			p.errs = append(p.errs, fmt.Errorf("aclfile %s: too many errors, giving up at line %d", name, n))
			break
		}
	}
	if len(p.errs) > 0 {
		return nil, p.warnings, errors.Join(p.errs...)
	}
	p.finish()
	return p.r, p.warnings, nil
}

func (p *parser) errorf(n int, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("aclfile %s:%d: %s", p.name, n, fmt.Sprintf(format, args...)))
}

func (p *parser) warnf(n int, format string, args ...any) {
	p.warnings = append(p.warnings, fmt.Sprintf("aclfile %s:%d: %s", p.name, n, fmt.Sprintf(format, args...)))
}

// isCSpace is C's isspace in the "C" locale, which mosquitto uses to trim.
func isCSpace(b byte) bool {
	return b == ' ' || (b >= '\t' && b <= '\r')
}

func trimCSpace(s string) string {
	for len(s) > 0 && isCSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isCSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// cutField splits off the next space-separated field the way strtok(" ")
// does: runs of spaces separate, leading spaces are skipped. rest is what
// follows the single space that ended the field ("" when none).
func cutField(s string) (field, rest string, more bool) {
	s = strings.TrimLeft(s, " ")
	field, rest, more = strings.Cut(s, " ")
	return field, rest, more
}

func (p *parser) parseLine(n int, line string) {
	for len(line) > 0 && isCSpace(line[len(line)-1]) {
		line = line[:len(line)-1]
	}
	if strings.HasPrefix(line, "#") || strings.TrimLeft(line, " ") == "" {
		return // a comment only when '#' is in column 0
	}
	if !utf8.ValidString(line) {
		p.errorf(n, "invalid line: not valid UTF-8")
		return
	}
	if i := strings.IndexFunc(line, isControl); i >= 0 {
		if line[i] == '\t' {
			p.errorf(n, "invalid line: tab character (fields are separated by spaces only)")
		} else {
			p.errorf(n, "invalid line: control character %s", strconv.QuoteRune(rune(line[i])))
		}
		return
	}
	keyword, rest, _ := cutField(line)
	switch keyword {
	case "topic", "pattern":
		p.parseRule(n, keyword, rest)
	case "user":
		name := trimCSpace(rest)
		if name == "" {
			p.errorf(n, "user: missing username")
			return
		}
		if first, ok := p.seen[name]; ok {
			p.warnf(n, "user %q: section repeated (first at line %d); rules are merged", name, first)
		} else {
			p.seen[name] = n
		}
		p.user, p.inUser = name, true
	default:
		if strings.HasPrefix(keyword, "#") {
			p.errorf(n, "invalid line: a comment must start in column 0")
			return
		}
		p.errorf(n, "invalid line: unknown keyword %s (expected topic, pattern or user; keywords are case-sensitive)", quoteShort(keyword))
	}
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strconv.Quote(s)
}

func (p *parser) parseRule(n int, keyword, rest string) {
	accWord, tail, more := cutField(rest)
	if accWord == "" {
		p.errorf(n, "%s: missing topic", keyword)
		return
	}
	topic := accWord
	access := accRead | accWrite
	if more && trimCSpace(tail) != "" {
		topic = trimCSpace(tail)
		switch accWord {
		case "read":
			access = accRead
		case "write":
			access = accWrite
		case "readwrite":
		case "deny":
			access = 0
		default:
			p.errorf(n, "%s: invalid access %s (expected read, write, readwrite or deny)", keyword, quoteShort(accWord))
			return
		}
	} else {
		switch accWord {
		case "read", "write", "readwrite", "deny":
			p.warnf(n, "%s %s: no topic after the access word, so this grants readwrite on the topic named %q", keyword, accWord, accWord)
		}
	}
	if !ValidFilter(topic) {
		hint := ""
		if strings.Contains(topic, " #") {
			hint = " (a comment must be on its own line, '#' in column 0)"
		}
		p.errorf(n, "%s: invalid topic filter %s%s", keyword, quoteShort(topic), hint)
		return
	}
	text := strings.TrimLeft(trimCSpace(keyword+" "+rest), " ")
	if keyword == "pattern" {
		ru := rule{access: access, line: n, text: text, f: compileFilter(topic, true)}
		if !ru.f.usesU && !ru.f.usesC {
			p.warnf(n, "pattern %s contains neither %%u nor %%c", quoteShort(topic))
		}
		p.r.patterns = append(p.r.patterns, ru)
		p.r.stats.Patterns++
		p.r.stats.UsesUsername = p.r.stats.UsesUsername || ru.f.usesU
		p.r.stats.UsesClientID = p.r.stats.UsesClientID || ru.f.usesC
		return
	}
	if strings.Contains(topic, "%u") || strings.Contains(topic, "%c") {
		p.warnf(n, "topic %s: %%u and %%c are substituted only in pattern lines", quoteShort(topic))
	}
	ru := rule{access: access, line: n, text: text, f: compileFilter(topic, false)}
	if !p.inUser {
		if p.r.anon == nil {
			p.r.anon = &list{}
		}
		p.r.anon.rules = append(p.r.anon.rules, ru)
		p.r.stats.AnonymousRules++
		return
	}
	l := p.r.users[p.user]
	if l == nil {
		l = &list{}
		p.r.users[p.user] = l
	}
	l.rules = append(l.rules, ru)
	p.r.stats.UserRules++
}

// finish puts deny rules first in every list, keeping file order otherwise.
func (p *parser) finish() {
	if p.r.anon != nil {
		p.r.anon.rules = denyFirst(p.r.anon.rules)
	}
	for _, l := range p.r.users {
		l.rules = denyFirst(l.rules)
	}
	p.r.patterns = denyFirst(p.r.patterns)
	p.r.stats.Users = len(p.r.users)
}

func denyFirst(rs []rule) []rule {
	out := make([]rule, 0, len(rs))
	for _, r := range rs {
		if r.access == 0 {
			out = append(out, r)
		}
	}
	for _, r := range rs {
		if r.access != 0 {
			out = append(out, r)
		}
	}
	return out
}
