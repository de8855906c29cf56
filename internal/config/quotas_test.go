package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestQuotas(t *testing.T) {
	c, err := parse(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Quotas != defaultQuotas() {
		t.Errorf("defaults %+v", c.Quotas)
	}
	if c.PersistentClientExpiration != 30*24*time.Hour {
		t.Errorf("persistent_client_expiration default %v, want 30 days", c.PersistentClientExpiration)
	}
	// The defaults keep every store key within bbolt's limit.
	if q := c.Quotas; q.MaxClientIDLength+3+q.MaxTopicLength > storeMaxKey {
		t.Errorf("default key %d bytes", q.MaxClientIDLength+3+q.MaxTopicLength)
	}

	c, err = parse(t, `max_topic_length 100
max_topic_levels 8
max_client_id_length 64
max_connect_size 0
max_subscriptions_per_client 5
max_sessions_per_user 0
max_retained_per_user 7
max_retained_bytes_per_user 5000000000
persistent_client_expiration 2w
`)
	if err != nil {
		t.Fatal(err)
	}
	want := Quotas{MaxTopicLength: 100, MaxTopicLevels: 8, MaxClientIDLength: 64, MaxSubscriptions: 5, MaxRetainedPerUser: 7, MaxRetainedBytesPerUser: 5000000000}
	if c.Quotas != want {
		t.Errorf("got %+v, want %+v", c.Quotas, want)
	}
	if c.PersistentClientExpiration != 14*24*time.Hour {
		t.Errorf("persistent_client_expiration %v", c.PersistentClientExpiration)
	}

	for _, tt := range []struct{ text, want string }{
		{"max_topic_length 0\n", "moat.conf:1: max_topic_length must be an integer from 1 to 32256"},
		{"max_topic_length 32257\n", "max_topic_length must be an integer from 1 to 32256"},
		{"max_topic_levels 0\n", "max_topic_levels must be an integer from 1"},
		{"max_client_id_length 22\n", "max_client_id_length must be an integer from 23"},
		{"max_connect_size -1\n", "max_connect_size must be an integer from 0"},
		{"max_sessions_per_user many\n", "max_sessions_per_user must be an integer"},
		{"max_retained_bytes_per_user 1e9\n", "max_retained_bytes_per_user must be an integer"},
		{"max_topic_length 30000\nmax_client_id_length 3000\n", "max_client_id_length (3000) plus max_topic_length (30000) must stay below 32765 bytes"},
	} {
		_, err := parse(t, tt.text)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.text, err, tt.want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: error does not wrap ErrInvalid", tt.text)
		}
	}
}
