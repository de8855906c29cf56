package acl

import (
	"strings"
	"testing"
)

func TestValidTopicFilter(t *testing.T) {
	tests := []struct {
		s             string
		topic, filter bool
	}{
		{"a", true, true},
		{"a/b/c", true, true},
		{"/", true, true},
		{"a//b", true, true},
		{"a b/ü", true, true},
		{"$SYS/x", true, true},
		{"#", false, true},
		{"+", false, true},
		{"a/+/b", false, true},
		{"+/+", false, true},
		{"a/#", false, true},
		{"/#", false, true},
		{"", false, false},
		{"a/#/b", false, false},
		{"a#", false, false},
		{"a+/b", false, false},
		{"a/b+", false, false},
		{"##", false, false},
		{"a\x00b", false, false},
		{"a\xff", false, false},
		{strings.Repeat("a", maxTopicLen), true, true},
		{strings.Repeat("a", maxTopicLen+1), false, false},
	}
	for _, tt := range tests {
		if got := ValidTopic(tt.s); got != tt.topic {
			t.Errorf("ValidTopic(%.20q) = %v", tt.s, got)
		}
		if got := ValidFilter(tt.s); got != tt.filter {
			t.Errorf("ValidFilter(%.20q) = %v", tt.s, got)
		}
	}
}

func TestFilterMatches(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/bc", false},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"#", "a/b", true},
		{"#", "/", true},
		{"+", "a", true},
		{"+", "a/", false},
		{"+", "/", false},
		{"+/+", "/", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"/#", "/a", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
		{"$SYS/+", "$SYS/x", true},
		{"a/b", "a/+", false}, // not a topic name
	}
	for _, tt := range tests {
		if got := FilterMatches(tt.filter, tt.topic); got != tt.want {
			t.Errorf("FilterMatches(%q, %q) = %v", tt.filter, tt.topic, got)
		}
		if got := refMatch(tt.filter, tt.topic); ValidTopic(tt.topic) && got != tt.want {
			t.Errorf("refMatch(%q, %q) = %v (test reference broken)", tt.filter, tt.topic, got)
		}
	}
}

func TestFilterCovers(t *testing.T) {
	tests := []struct {
		rule, sub string
		want      bool
	}{
		{"alice/#", "alice/#", true},
		{"alice/#", "alice", true},
		{"alice/#", "alice/+/temp", true},
		{"alice/#", "alice/x/#", true},
		{"alice/#", "#", false},
		{"alice/#", "+/x", false},
		{"alice/#", "+/#", false},
		{"alice/#", "alicex/#", false},
		{"#", "#", true},
		{"#", "+/+/#", true},
		{"#", "$SYS/#", false},
		{"$SYS/#", "$SYS/broker/+", true},
		{"$SYS/#", "#", false},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a", false},
		{"a/+", "a/b/c", false},
		{"a/+", "a/", true},
		{"a/b", "a/+", false},
		{"a/b", "a/b", true},
		{"a/b", "a/b/#", false},
		{"+/+", "a/+", true},
		{"+", "#", false},
		{"zigbee2mqtt/+/set", "zigbee2mqtt/lamp/set", true},
		{"a/#", "a/#/b", false}, // invalid sub
		{"a/#/b", "a", false},   // invalid rule
	}
	for _, tt := range tests {
		if got := FilterCovers(tt.rule, tt.sub); got != tt.want {
			t.Errorf("FilterCovers(%q, %q) = %v", tt.rule, tt.sub, got)
		}
	}
}

// refMatch is an obviously-correct matcher used as the test oracle.
func refMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && !strings.HasPrefix(filter, "$") {
		return false
	}
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// instances returns concrete topics matched by sub, built from its own
// levels and those of rule so the interesting boundaries are reached.
func instances(sub, rule string) []string {
	words := []string{"x", "", "$x"}
	for _, w := range strings.Split(rule, "/") {
		if w != "+" && w != "#" {
			words = append(words, w)
		}
	}
	out := []string{""}
	for i, lv := range strings.Split(sub, "/") {
		var next []string
		for _, prefix := range out {
			join := func(s string) string {
				if i == 0 {
					return s
				}
				return prefix + "/" + s
			}
			switch lv {
			case "+":
				for _, w := range words {
					next = append(next, join(w))
				}
			case "#":
				if i > 0 {
					next = append(next, prefix) // '#' matches the parent
				}
				for _, w := range words {
					next = append(next, join(w), join(w+"/y"))
				}
			default:
				next = append(next, join(lv))
			}
		}
		if len(next) > 2000 {
			next = next[:2000]
		}
		out = next
	}
	return out
}

func FuzzFilterCovers(f *testing.F) {
	for _, s := range [][2]string{
		{"alice/#", "alice/+/temp"}, {"alice/#", "#"}, {"a/+", "a/#"}, {"#", "$SYS/#"}, {"+/+", "a/+"},
		{"a/+/c", "a/b/c"}, {"/#", "/+"}, {"$SYS/+", "$SYS/x"}, {"a/b", "a/b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, rule, sub string) {
		covers := FilterCovers(rule, sub)
		if !ValidFilter(rule) || !ValidFilter(sub) {
			if covers {
				t.Fatal("invalid filter covered")
			}
			return
		}
		if !FilterCovers(rule, rule) || !FilterCovers(sub, sub) {
			t.Fatal("a filter does not cover itself")
		}
		for _, tp := range instances(sub, rule) {
			if !ValidTopic(tp) {
				continue
			}
			inSub := FilterMatches(sub, tp)
			if inSub != refMatch(sub, tp) || FilterMatches(rule, tp) != refMatch(rule, tp) {
				t.Fatalf("FilterMatches disagrees with the oracle on %q", tp)
			}
			if covers && inSub && !refMatch(rule, tp) {
				t.Fatalf("FilterCovers(%q, %q) but %q matches only the sub", rule, sub, tp)
			}
		}
		// With no '$' and no wildcard in sub, coverage is plain matching.
		if ValidTopic(sub) && covers != refMatch(rule, sub) {
			t.Fatalf("FilterCovers(%q, %q) = %v, matching says otherwise", rule, sub, covers)
		}
	})
}
