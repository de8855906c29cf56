package config

import (
	"strings"
	"testing"
)

func TestBanSettings(t *testing.T) {
	c, err := parse(t, "listener 1883\n")
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Abuse; a.BanThreshold != 5 || a.BanIPv4Prefix != 32 || a.BanIPv6Prefix != 64 || a.BanMax.Seconds() != 900 || a.BanBase.Seconds() != 2 {
		t.Fatalf("defaults %+v", a)
	}
	c, err = parse(t, "listener 1883\nban_threshold 3\nban_time_max 60\nban_ipv4_prefix 24\nban_ipv6_prefix 56\n")
	if err != nil {
		t.Fatal(err)
	}
	if a := c.Abuse; a.BanThreshold != 3 || a.BanIPv4Prefix != 24 || a.BanIPv6Prefix != 56 || a.BanMax.Seconds() != 60 {
		t.Fatalf("set %+v", a)
	}
	for _, tt := range []struct{ text, want string }{
		{"ban_ipv4_prefix 33\n", "moat.conf:1: ban_ipv4_prefix must be an integer from 8 to 32"},
		{"ban_ipv4_prefix /24\n", "moat.conf:1: ban_ipv4_prefix must be an integer"},
		{"listener 1883\nban_ipv6_prefix 8\n", "moat.conf:2: ban_ipv6_prefix must be an integer from 16 to 128"},
	} {
		if _, err := parse(t, tt.text); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.text, err, tt.want)
		}
	}
}
