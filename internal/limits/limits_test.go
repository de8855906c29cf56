package limits

import (
	"strings"
	"testing"
)

func testSettings() Settings {
	return Settings{MaxTopicLength: 64, MaxTopicLevels: 4, MaxClientIDLength: 23}
}

func TestCheckTopic(t *testing.T) {
	s := testSettings()
	tests := []struct {
		topic string
		want  string
	}{
		{"a", ""},
		{"a/b/c/d", ""},
		{"a/b/c/d/e", LimitTopicLevels},
		{"////", LimitTopicLevels},
		{"///", ""},
		{strings.Repeat("x", 64), ""},
		{strings.Repeat("x", 65), LimitTopicLength},
		{strings.Repeat("/", 30000), LimitTopicLength},
		{"", ""},
		{"a/\"ip=1.2.3.4\"/\x00", ""},
	}
	for _, tt := range tests {
		if got := s.CheckTopic(tt.topic); got != tt.want {
			t.Errorf("CheckTopic(%.40q) = %q, want %q", tt.topic, got, tt.want)
		}
	}
	if got := (Settings{}).CheckTopic(strings.Repeat("a/", 40000)); got != "" {
		t.Errorf("zero settings refuse: %q", got)
	}
}

func TestCheckClientID(t *testing.T) {
	s := testSettings()
	for _, tt := range []struct {
		id   string
		want string
	}{
		{"", ""},
		{strings.Repeat("c", 23), ""},
		{strings.Repeat("c", 24), LimitClientIDLength},
		{strings.Repeat("c", 40000), LimitClientIDLength},
	} {
		if got := s.CheckClientID(tt.id); got != tt.want {
			t.Errorf("CheckClientID(len %d) = %q, want %q", len(tt.id), got, tt.want)
		}
	}
}

func TestV3Connack(t *testing.T) {
	for _, tt := range []struct {
		v5   byte
		noID bool
		want byte
		ok   bool
	}{
		{0x80, true, 2, true},
		{0x80, false, 3, true},
		{0x84, false, 1, true},
		{0x85, false, 2, true},
		{0x86, false, 4, true},
		{0x87, false, 5, true},
		{0x88, false, 3, true},
		{0x89, false, 3, true},
		{0x97, false, 3, true},
		{0x9F, false, 3, true},
		{0x82, false, 0, false},
		{0x81, false, 0, false},
		{0x95, false, 0, false},
		{0x9A, false, 0, false},
		{0x9B, false, 0, false},
		{0x8C, false, 0, false},
	} {
		got, ok := V3Connack(tt.v5, tt.noID)
		if got != tt.want || ok != tt.ok {
			t.Errorf("V3Connack(0x%02x, %v) = %d %v, want %d %v", tt.v5, tt.noID, got, ok, tt.want, tt.ok)
		}
		if ok && got > 5 {
			t.Errorf("0x%02x maps outside 3.1.1's codes: %d", tt.v5, got)
		}
	}
	// Every code mochi defines maps inside 0-5 or closes.
	for c := 0x80; c <= 0xff; c++ {
		if got, ok := V3Connack(byte(c), false); ok && got > 5 {
			t.Errorf("0x%02x -> %d", c, got)
		}
	}
}
