package config

import (
	"strings"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	for _, tt := range []struct {
		text string
		want int64
		err  string
	}{
		{text: "listener 1883\n", want: 0},
		{text: "memory_limit 0\n", want: 0},
		{text: "memory_limit 268435456\n", want: 256 << 20},
		{text: "memory_limit 33554432 # 32 MiB\n", want: 32 << 20},
		{text: "memory_limit 9223372036854775807\n", want: 1<<63 - 1},
		{text: "memory_limit 1000\n", err: "moat.conf:1: memory_limit must be 0 (the container's limit) or a byte count of at least 33554432"},
		{text: "memory_limit -1\n", err: "moat.conf:1: memory_limit must be"},
		{text: "memory_limit 256M\n", err: "moat.conf:1: memory_limit must be"},
		{text: "memory_limit 9223372036854775808\n", err: "memory_limit must be"},
		{text: "listener 1883\nmemory_limit \"1e9\"\n", err: "moat.conf:2: memory_limit must be"},
		{text: "memory_limit " + strings.Repeat("9", 60<<10) + "\n", err: "memory_limit must be"},
	} {
		c, err := parse(t, tt.text)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%.40q: error %v, want %q", tt.text, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.text, err)
			continue
		}
		if c.Memory.Limit != tt.want {
			t.Errorf("%q: limit %d, want %d", tt.text, c.Memory.Limit, tt.want)
		}
	}
}
