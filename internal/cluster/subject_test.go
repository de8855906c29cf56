package cluster

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"
)

func TestTopicSubjects(t *testing.T) {
	s := NewSubjects("prod")
	cases := []struct{ topic, subject string }{
		{"a/b", "moat.prod.0.a.b"},
		{"a.b", "moat.prod.0.a_2Eb"},
		{"a/*/>", "moat.prod.0.a._2A._3E"},
		{"with space", "moat.prod.0.with_20space"},
		{"a//b", "moat.prod.0.a.=.b"},
		{"/", "moat.prod.0.=.="},
		{"/a", "moat.prod.0.=.a"},
		{"", "moat.prod.0.="},
		{"$SYS/x", "moat.prod.0._24SYS.x"},
		{"_41", "moat.prod.0._5F41"},
		{"A", "moat.prod.0.A"},
		{"=", "moat.prod.0._3D"},
		{"tab\tnl\n", "moat.prod.0.tab_09nl_0A"},
		{"é", "moat.prod.0._C3_A9"},
		{"\x00", "moat.prod.0._00"},
	}
	seen := map[string]string{}
	for _, c := range cases {
		got, err := s.Topic(c.topic, false)
		if err != nil || got != c.subject {
			t.Errorf("Topic(%q) = %q, %v; want %q", c.topic, got, err, c.subject)
			continue
		}
		if !server.IsValidLiteralSubject(got) {
			t.Errorf("Topic(%q) = %q is not a valid literal NATS subject", c.topic, got)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("%q and %q share the subject %q", prev, c.topic, got)
		}
		seen[got] = c.topic
		back, err := s.TopicOf(got)
		if err != nil || back != c.topic {
			t.Errorf("TopicOf(%q) = %q, %v; want %q", got, back, err, c.topic)
		}
		if k := Key(c.topic); !validKey(k) {
			t.Errorf("Key(%q) = %q is not a valid key-value key", c.topic, k)
		}
	}
	// The cluster name is a token too: no name can reach into another's subjects.
	if d, _ := s.Topic("a", true); d != "moat.prod.1.a" {
		t.Errorf("durable subject = %q", d)
	}
	if p := NewSubjects("a.b>").Prefix(); p != "moat.a_2Eb_3E." {
		t.Errorf("prefix = %q", p)
	}
}

func TestFilterSubjects(t *testing.T) {
	s := NewSubjects("c")
	cases := []struct {
		filter string
		want   []string
	}{
		{"a/b", []string{"moat.c.*.a.b"}},
		{"a/+", []string{"moat.c.*.a.*"}},
		{"+", []string{"moat.c.*.*"}},
		{"#", []string{"moat.c.*.>"}},
		{"a/#", []string{"moat.c.*.a", "moat.c.*.a.>"}},
		{"+/#", []string{"moat.c.*.*", "moat.c.*.*.>"}},
		{"/#", []string{"moat.c.*.=", "moat.c.*.=.>"}},
		{"a/+/b.c", []string{"moat.c.*.a.*.b_2Ec"}},
		{"$share/g/a/+", []string{"moat.c.*.a.*"}},
		{"$SYS/#", []string{"moat.c.*._24SYS", "moat.c.*._24SYS.>"}},
	}
	for _, c := range cases {
		got := s.FilterSubjects(c.filter)
		if strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("FilterSubjects(%q) = %q, want %q", c.filter, got, c.want)
		}
		for _, g := range got {
			if !server.IsValidSubject(g) {
				t.Errorf("FilterSubjects(%q): %q is not a valid NATS subject", c.filter, g)
			}
		}
	}
}

func TestLongTopicsAndFilters(t *testing.T) {
	s := NewSubjects("c")
	long := strings.Repeat("é/", 2000)
	if _, err := s.Topic(long, false); !errors.Is(err, ErrTopicTooLong) {
		t.Fatalf("Topic(64 KiB) error = %v, want ErrTopicTooLong", err)
	}
	subs := s.FilterSubjects(long + "#")
	if len(subs) != 1 || len(subs[0]) > MaxSubject || !strings.HasSuffix(subs[0], ".>") {
		t.Fatalf("long filter widened to %q", subs)
	}
	if !server.IsValidSubject(subs[0]) {
		t.Fatalf("widened subject %q invalid", subs[0])
	}
	// The widened subject still matches what the filter matches.
	topic := long + "x"
	full := s.prefix + "1."
	var b strings.Builder
	encodeTopic(&b, topic)
	full += b.String()
	if !server.SubjectMatchesFilter(full, subs[0]) {
		t.Fatalf("widened filter does not match a topic of the filter")
	}
}

func TestDecodeRefusesNonCanonical(t *testing.T) {
	s := NewSubjects("c")
	for _, sub := range []string{"moat.c.*._61", "moat.c.*.a..b", "moat.c.*._2", "moat.c.*._2e", "moat.c.*.a b", "moat.c.*.*", "other.x", "moat.c.*.a=b"} {
		if topic, err := s.TopicOf(sub); err == nil {
			t.Errorf("TopicOf(%q) = %q, want an error", sub, topic)
		}
	}
}

func validKey(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(isPlain(c) || c == '/' || c == '_' || c == '=' || c == '.') {
			return false
		}
	}
	return true
}

// mqttMatch is MQTT's topic matching [MQTT-4.7], for checking the mapping.
func mqttMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(tp) || l != "+" && l != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

func validTopic(t string) bool {
	return len(t) <= 65535 && utf8.ValidString(t) && !strings.ContainsAny(t, "+#\x00")
}

func FuzzTopicSubjects(f *testing.F) {
	for _, s := range []string{"a/b", "a.b", "", "/", "$SYS/#", "a//b", "_2E", "* >", "a/+/c", "é/ü"} {
		f.Add(s, s+"/x")
	}
	s := NewSubjects("fuzz")
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, topic := range []string{a, b} {
			if !validTopic(topic) {
				continue
			}
			sub, err := s.Topic(topic, len(topic)%2 == 0)
			if errors.Is(err, ErrTopicTooLong) {
				continue
			}
			if err != nil || !server.IsValidLiteralSubject(sub) {
				t.Fatalf("Topic(%q) = %q, %v", topic, sub, err)
			}
			back, err := s.TopicOf(sub)
			if err != nil || back != topic {
				t.Fatalf("round trip %q -> %q -> %q, %v", topic, sub, back, err)
			}
			if k := Key(topic); !validKey(k) {
				t.Fatalf("Key(%q) = %q invalid", topic, k)
			}
		}
		if validTopic(a) && validTopic(b) && a != b {
			sa, ea := s.Topic(a, true)
			sb, eb := s.Topic(b, true)
			if ea == nil && eb == nil && sa == sb {
				t.Fatalf("%q and %q share the subject %q", a, b, sa)
			}
			if Key(a) == Key(b) {
				t.Fatalf("%q and %q share the key %q", a, b, Key(a))
			}
		}
		// b as a filter: whatever it matches, its subjects match.
		if len(b) <= 65535 && utf8.ValidString(b) && !strings.Contains(b, "\x00") && validFilter(b) && validTopic(a) {
			sub, err := s.Topic(a, true)
			if err != nil || !mqttMatch(b, a) {
				return
			}
			ok := false
			for _, fs := range s.FilterSubjects(b) {
				if !server.IsValidSubject(fs) {
					t.Fatalf("FilterSubjects(%q): invalid %q", b, fs)
				}
				ok = ok || server.SubjectMatchesFilter(sub, fs)
			}
			if !ok {
				t.Fatalf("filter %q matches %q but none of %q matches %q", b, a, s.FilterSubjects(b), sub)
			}
		}
	})
}

func validFilter(f string) bool {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if l == "#" && i != len(levels)-1 {
			return false
		}
		if l != "+" && l != "#" && strings.ContainsAny(l, "+#") {
			return false
		}
	}
	return true
}

func FuzzSubjectMatches(f *testing.F) {
	f.Add("a.*.>", "a.b.c")
	f.Add("a.b", "a.b")
	f.Add("*", "a.b")
	f.Fuzz(func(t *testing.T, filter, subject string) {
		if !server.IsValidSubject(filter) || !server.IsValidLiteralSubject(subject) {
			return
		}
		// Only the filters Moat builds: a wildcard is a whole token.
		for _, tok := range strings.Split(filter, ".") {
			if tok != "*" && tok != ">" && strings.ContainsAny(tok, "*>") {
				return
			}
		}
		if got, want := subjectMatches(filter, subject), server.SubjectMatchesFilter(subject, filter); got != want {
			t.Fatalf("subjectMatches(%q, %q) = %v, nats-server says %v", filter, subject, got, want)
		}
	})
}
