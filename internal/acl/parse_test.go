package acl

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustParse(t testing.TB, src string) *Rules {
	t.Helper()
	r, _, err := Parse("t.acl", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return r
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // each must appear in the joined error
	}{
		{"tab separator", "topic\tread a/b\n", []string{"aclfile t.acl:1: invalid line: tab character"}},
		{"tab before topic", "user alice\ntopic read\ta/b\n", []string{"aclfile t.acl:2: invalid line: tab"}},
		{"indented comment", "  # comment\n", []string{"aclfile t.acl:1: invalid line: a comment must start in column 0"}},
		{"uppercase keyword", "TOPIC read a\n", []string{`aclfile t.acl:1: invalid line: unknown keyword "TOPIC"`}},
		{"unknown keyword", "\n\nsuperuser bob\n", []string{`aclfile t.acl:3: invalid line: unknown keyword "superuser"`}},
		{"user without name", "user\n", []string{"aclfile t.acl:1: user: missing username"}},
		{"user with blanks only", "user   \r\n", []string{"aclfile t.acl:1: user: missing username"}},
		{"topic without topic", "topic\n", []string{"aclfile t.acl:1: topic: missing topic"}},
		{"pattern without topic", "pattern   \n", []string{"aclfile t.acl:1: pattern: missing topic"}},
		{"bad access", "topic rw a/b\n", []string{`aclfile t.acl:1: topic: invalid access "rw"`}},
		{"access case-sensitive", "topic READ a/b\n", []string{`aclfile t.acl:1: topic: invalid access "READ"`}},
		{"hash in middle", "topic read foo/#/bar\n", []string{`aclfile t.acl:1: topic: invalid topic filter "foo/#/bar"`}},
		{"plus inside level", "pattern read a+/%u\n", []string{`aclfile t.acl:1: pattern: invalid topic filter "a+/%u"`}},
		{"trailing comment", "topic read a/b # note\n", []string{`aclfile t.acl:1: topic: invalid topic filter "a/b # note" (a comment must be on its own line`}},
		{"hash inside level", "topic a#\n", []string{`aclfile t.acl:1: topic: invalid topic filter "a#"`}},
		{"NUL", "topic read a\x00b\n", []string{"aclfile t.acl:1: invalid line: control character"}},
		{"invalid UTF-8", "topic read a\xffb\n", []string{"aclfile t.acl:1: invalid line: not valid UTF-8"}},
		{"line too long", "topic read " + strings.Repeat("a", maxLineLen) + "\n", []string{"aclfile t.acl:1: line longer than"}},
		{"collects all", "topic read ok\nTOPIC x\nuser\ntopic read a/#/b\n", []string{
			"aclfile t.acl:2: invalid line", "aclfile t.acl:3: user: missing username", "aclfile t.acl:4: topic: invalid topic filter",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _, err := Parse("t.acl", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded, want errors %q", tt.want)
			}
			if r != nil {
				t.Errorf("Parse returned rules with an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			// Every reported error names the file and a line.
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "aclfile t.acl:") {
					t.Errorf("error line %q does not name file:line", line)
				}
			}
		})
	}
}

func TestParseTooManyErrors(t *testing.T) {
	_, _, err := Parse("t.acl", []byte(strings.Repeat("bad\n", 1000)))
	if err == nil || !strings.Contains(err.Error(), "too many errors") {
		t.Fatalf("err = %v", err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n > maxErrors+1 {
		t.Errorf("%d errors reported, want at most %d", n, maxErrors+1)
	}
}

func TestParseAccepted(t *testing.T) {
	tests := []struct {
		name     string
		src      string
		stats    Stats
		warnings []string
		// rule text expected per line (a check that the line parsed as intended)
		check func(t *testing.T, r *Rules)
	}{
		{name: "comments blanks CRLF leading spaces", src: "# c\r\n\r\n   \n   topic read a/b  \r\n#\tfine in a comment\n",
			stats: Stats{AnonymousRules: 1},
			check: func(t *testing.T, r *Rules) {
				wantRule(t, r.anon.rules[0], accRead, "topic read a/b", 4)
			}},
		{name: "no access word is readwrite", src: "topic a/b\n", stats: Stats{AnonymousRules: 1},
			check: func(t *testing.T, r *Rules) { wantRule(t, r.anon.rules[0], accRead|accWrite, "topic a/b", 1) }},
		{name: "topic read alone is the topic named read", src: "topic read\n", stats: Stats{AnonymousRules: 1},
			warnings: []string{`aclfile t.acl:1: topic read: no topic after the access word`},
			check: func(t *testing.T, r *Rules) {
				wantRule(t, r.anon.rules[0], accRead|accWrite, "topic read", 1)
				if !r.CanWrite(&Client{}, "read") {
					t.Error("anonymous cannot write topic \"read\"")
				}
			}},
		{name: "topic with spaces and runs of spaces", src: "user alice\ntopic  write   a b/c d \n", stats: Stats{Users: 1, UserRules: 1},
			check: func(t *testing.T, r *Rules) {
				wantRule(t, r.users["alice"].rules[0], accWrite, "topic  write   a b/c d", 2)
				if !r.CanWrite(&Client{Username: "alice", HasUsername: true}, "a b/c d") {
					t.Error("alice cannot write \"a b/c d\"")
				}
			}},
		{name: "user name is the rest of the line", src: "user  al ice \ntopic x\n", stats: Stats{Users: 1, UserRules: 1},
			check: func(t *testing.T, r *Rules) {
				if r.users["al ice"] == nil {
					t.Errorf("users = %v", r.users)
				}
			}},
		{name: "deny goes first", src: "topic read a/#\ntopic deny a/b\ntopic deny a/c\n", stats: Stats{AnonymousRules: 3},
			check: func(t *testing.T, r *Rules) {
				wantRule(t, r.anon.rules[0], 0, "topic deny a/b", 2)
				wantRule(t, r.anon.rules[1], 0, "topic deny a/c", 3)
				wantRule(t, r.anon.rules[2], accRead, "topic read a/#", 1)
			}},
		{name: "repeated user merges", src: "user a\ntopic x\nuser b\ntopic y\nuser a\ntopic z\n", stats: Stats{Users: 2, UserRules: 3},
			warnings: []string{`aclfile t.acl:5: user "a": section repeated (first at line 1)`},
			check: func(t *testing.T, r *Rules) {
				if len(r.users["a"].rules) != 2 {
					t.Errorf("user a has %d rules", len(r.users["a"].rules))
				}
			}},
		{name: "patterns anywhere", src: "user a\npattern read %u/#\ntopic x\npattern write pre-%c/#\n",
			stats: Stats{Users: 1, UserRules: 1, Patterns: 2, UsesUsername: true, UsesClientID: true}},
		{name: "pattern without substitution warns", src: "pattern read a/#\n", stats: Stats{Patterns: 1},
			warnings: []string{`aclfile t.acl:1: pattern "a/#" contains neither %u nor %c`}},
		{name: "topic with %u warns", src: "topic read %u/#\n", stats: Stats{AnonymousRules: 1},
			warnings: []string{`aclfile t.acl:1: topic "%u/#": %u and %c are substituted only in pattern lines`}},
		{name: "user without topics", src: "user a\nuser b\n", stats: Stats{}},
		{name: "no final newline", src: "topic deny x", stats: Stats{AnonymousRules: 1}},
		{name: "empty file", src: "", stats: Stats{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, warnings, err := Parse("t.acl", []byte(tt.src))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := r.Stats(); got != tt.stats {
				t.Errorf("Stats = %+v, want %+v", got, tt.stats)
			}
			if len(warnings) != len(tt.warnings) {
				t.Errorf("warnings = %q, want %q", warnings, tt.warnings)
			}
			for i := range min(len(warnings), len(tt.warnings)) {
				if !strings.HasPrefix(warnings[i], tt.warnings[i]) {
					t.Errorf("warning %q, want prefix %q", warnings[i], tt.warnings[i])
				}
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func wantRule(t *testing.T, ru rule, access uint8, text string, line int) {
	t.Helper()
	if ru.access != access || ru.text != text || ru.line != line {
		t.Errorf("rule = {access %d, %q, line %d}, want {access %d, %q, line %d}", ru.access, ru.text, ru.line, access, text, line)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.acl")
	if err := os.WriteFile(good, []byte("pattern readwrite %u/#\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, _, err := Load(good)
	if err != nil || r.Name() != good || !r.UsesPatterns() {
		t.Fatalf("Load = %v, %v", r, err)
	}
	bad := filepath.Join(dir, "bad.acl")
	if err := os.WriteFile(bad, []byte("topic read ok\n\ttopic x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "aclfile "+bad+":2: invalid line") {
		t.Errorf("Load(bad) err = %v", err)
	}
	if _, _, err := Load(filepath.Join(dir, "missing.acl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	seeds := []string{
		"", "topic read a/#\n", "user alice\ntopic deny a\npattern readwrite %u/#\n",
		"pattern read x/%u%u/%c/#\n", "topic read\n", "  # x\n", "user\n", "topic foo/#/bar\n",
		"pattern write pre-%u/+/%%u\r\n", "user $SYS\ntopic read $SYS/#\n",
	}
	if b, err := os.ReadFile("testdata/acl-semantics.acl"); err == nil {
		seeds = append(seeds, string(b))
	}
	for _, s := range seeds {
		f.Add(s, "alice", true, "c1", "alice/x", "alice/#")
	}
	f.Fuzz(func(t *testing.T, src, user string, hasUser bool, id, topic, sub string) {
		r, _, err := Parse("f.acl", []byte(src))
		if err != nil {
			if r != nil {
				t.Fatal("rules returned with an error")
			}
			return
		}
		c := &Client{Username: user, HasUsername: hasUser, ClientID: id}
		// No check may panic; a strict grant implies every delivery it could
		// bring passes the read check for the concrete topic.
		r.CanRead(c, topic)
		r.CanWrite(c, topic)
		r.CanSubscribe(c, sub, false)
		if !strings.HasPrefix(sub, "$share") && r.CanSubscribe(c, sub, true) && FilterMatches(sub, topic) && !r.CanRead(c, topic) {
			// Allowed: a partial deny is filtered at delivery. Only check
			// when the file has no deny rules.
			if !strings.Contains(src, "deny") {
				t.Fatalf("strict grant of %q but read of %q denied", sub, topic)
			}
		}
		for _, op := range []Op{OpRead, OpWrite, OpSubscribe} {
			d := r.Explain(c, op, topic, true)
			if d.Allow != r.check(c, op, topic, true).allow {
				t.Fatal("Explain disagrees with check")
			}
		}
	})
}
