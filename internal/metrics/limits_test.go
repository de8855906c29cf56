package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestLimitHit(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"max_topic_length", "max_topic_length", "max_sessions_per_user"} {
		m.LimitHit(l)
	}
	for _, tt := range []struct {
		limit string
		want  float64
	}{{"max_topic_length", 2}, {"max_sessions_per_user", 1}, {"max_connect_size", 0}} {
		if v := testutil.ToFloat64(m.limitRefusals.WithLabelValues(tt.limit)); v != tt.want {
			t.Errorf("%s = %v, want %v", tt.limit, v, tt.want)
		}
	}
	var none *Metrics
	none.LimitHit("max_topic_length") // nil-safe
}
