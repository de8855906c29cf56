package deploy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/config"
)

// limits are a listener's effective connection limits.
type limits struct {
	maxConns, perIP int
	rate            float64
	timeout         time.Duration
	proxies         string
}

// Every shipped configuration loads, and each listener carries the limits
// its comments promise: a per-listener setting written after a listener
// line reaches that listener only.
func TestShippedConfigsListenerLimits(t *testing.T) {
	env := func(k string) string {
		return map[string]string{"DOMAIN": "mqtt.example.com", "EMAIL": "ops@example.com"}[k]
	}
	tests := map[string]map[string]limits{
		"direct/moat.conf": {
			"mqtt::1883":  {-1, 0, 0, 10 * time.Second, "[]"},
			"mqtts::8883": {-1, 64, 0, 10 * time.Second, "[]"},
			"wss::8083":   {-1, 64, 0, 10 * time.Second, "[]"},
		},
		"tunnel/moat.conf": {
			"ws::9001": {-1, 32, 0, 10 * time.Second, "[172.30.57.2/32]"},
		},
		"../sample/moat.conf": {
			"mqtt:127.0.0.1:1883": {-1, 0, 0, 10 * time.Second, "[]"},
			"ws:127.0.0.1:9001":   {-1, 0, 0, 10 * time.Second, "[]"},
		},
		"../sample/homeassistant/moat.conf": {
			"mqtt::1883": {-1, 0, 0, 10 * time.Second, "[]"},
		},
	}
	for file, want := range tests {
		t.Run(file, func(t *testing.T) {
			cfg, err := config.Load(file, env)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range cfg.Warnings {
				if strings.Contains(w, "applies to listener") {
					t.Errorf("misplaced per-listener setting: %s", w)
				}
			}
			got := map[string]limits{}
			for _, l := range cfg.Listeners {
				got[l.ID] = limits{l.MaxConnections, l.MaxConnectionsPerIP, l.ConnectRatePerIP, l.ConnectTimeout, fmt.Sprint(l.TrustedProxies)}
			}
			if len(got) != len(want) {
				t.Errorf("listeners %v, want %v", got, want)
			}
			for id, w := range want {
				if g, ok := got[id]; !ok || g != w {
					t.Errorf("listener %s: limits %+v, want %+v", id, g, w)
				}
			}
		})
	}
}
