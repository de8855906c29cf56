package config

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// A new directive must come with its reload decision.
func TestEveryDirectiveHasAReloadDecision(t *testing.T) {
	names := Directives()
	for _, n := range names {
		if _, ok := ReloadDecision(n); !ok {
			t.Errorf("directive %s has no reload decision: add it to reloadDecisions", n)
		}
	}
	for n := range reloadDecisions() {
		if !slices.Contains(names, n) {
			t.Errorf("reload decision for %s, which is not a directive", n)
		}
	}
}

// Values tried for every directive: whichever parse must change the
// configuration or warn; a directive no value parses for is refused.
var probeValues = []string{
	"true", "false", "0", "1", "2", "7", "12", "100", "4096", "mqtt.example.com", "ops@example.com",
	"/tmp/moat-probe", "websockets", "ipv4", "acme", "tlsv1.3", "json", "all", "stdout", "off",
	"2w", "/mqtt", "https://dash.example.com", "10.0.0.0/8", "127.0.0.1:5353", "ec384", "3600",
	"127.0.0.1:7884", "%Y", "tenant/",
}

func comparable(c *Config) *Config {
	cp := *c
	cp.Warnings, cp.Settings = nil, nil
	return &cp
}

// defaultOnly are directives whose accepted probe values are Moat's own
// behaviour; their other values are refused or need companion directives.
var defaultOnly = map[string]string{
	"allow_zero_length_clientid": "true is Moat's behaviour; false is refused",
	"max_inflight_bytes":         "0 (no limit) is Moat's behaviour; others are refused",
	"max_queued_bytes":           "0 (no limit) is Moat's behaviour; others are refused",
	"memory_limit":               "0 (no limit) is Moat's behaviour; others are refused",
	"queue_qos0_messages":        "false is Moat's behaviour; true is refused",
	"upgrade_outgoing_qos":       "false is Moat's behaviour; true is refused",
	"use_identity_as_username":   "false is Moat's behaviour; true is refused",
	"use_subject_as_username":    "false is Moat's behaviour; true is refused",
	"per_listener_settings":      "false is the default; true must precede the listener lines",
	"require_certificate":        "false is the default; true needs cafile and a TLS listener",
}

// Every directive is implemented, refused with a reason, or accepted with a
// warning saying why it is safe to ignore: none is silently ignored.
func TestNoDirectiveIsSilentlyIgnored(t *testing.T) {
	base, err := Parse("moat.conf", []byte("listener 1883 127.0.0.1\nprotocol mqtt\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Directives() {
		parsed, effect := 0, false
		var silent []string
		for _, v := range probeValues {
			c, err := Parse("moat.conf", []byte("listener 1883 127.0.0.1\nprotocol mqtt\n"+name+" "+v+"\n"), nil)
			if err != nil {
				continue
			}
			parsed++
			if len(c.Warnings) > len(base.Warnings) || !reflect.DeepEqual(comparable(c), comparable(base)) {
				effect = true
				break
			}
			silent = append(silent, v)
		}
		if parsed > 0 && !effect && defaultOnly[name] == "" {
			t.Errorf("%s %v: accepted without effect and without a warning", name, silent)
		}
	}
}

func TestRefusedDirectivesSayWhy(t *testing.T) {
	for _, line := range []string{
		"mount_point tenant/", "ciphers ECDHE-RSA-AES128-GCM-SHA256", "ciphers_tls1.3 TLS_AES_128_GCM_SHA256",
		"websockets_headers_size 4096", "auto_id_prefix auto-",
	} {
		_, err := Parse("moat.conf", []byte("listener 1883 127.0.0.1\n"+line+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), "moat.conf:2: ") || !strings.Contains(err.Error(), "not supported by Moat: ") {
			t.Errorf("%s: %v, want a refusal naming moat.conf:2 with a reason", line, err)
		}
	}
}

func TestRestartRequired(t *testing.T) {
	const base = "listener 1883 127.0.0.1\nconnect_timeout 8\nlistener 8883 127.0.0.1\nallow_anonymous false\npassword_file p\nmax_qos 2\n"
	tests := []struct {
		name, next string
		want       []string
	}{
		{"same", base, nil},
		{"live only", strings.Replace(base, "password_file p", "password_file q\nacl_file a\nconnection_messages false\nmessage_size_limit 10", 1), nil},
		{"port", strings.Replace(base, "listener 8883", "listener 8884", 1), []string{"listener (next.conf:3)"}},
		{"timeout moved to another listener", "listener 1883 127.0.0.1\nlistener 8883 127.0.0.1\nconnect_timeout 8\nallow_anonymous false\npassword_file p\nmax_qos 2\n", []string{"connect_timeout (next.conf:3)"}},
		{"connection limits", strings.Replace(base, "connect_timeout 8", "connect_timeout 8\nmax_connections_per_ip 2\nmax_connections 10\nmax_connection_rate_per_ip 5", 1), nil},
		{"removed", strings.Replace(base, "max_qos 2\n", "", 1), []string{"max_qos (old.conf:6)"}},
		{"password_file dropped", "listener 1883 127.0.0.1\nconnect_timeout 8\nlistener 8883 127.0.0.1\nallow_anonymous true\nmax_qos 2\n", []string{"password_file removed (old.conf:5)"}},
		{"TLS added", base + "certfile c\nkeyfile k\n", []string{"listener mqtts:127.0.0.1:8883 (next.conf:3)"}},
		{"log and persistence", base + "log_type debug\npersistence false\n", []string{"persistence (next.conf:8)"}},
	}
	old, err := Parse("old.conf", []byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next, err := Parse("next.conf", []byte(tc.next), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := RestartRequired(old, next); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// A per-listener setting after broker-wide ones still belongs to the last
// listener line: say so, since the file reads as if it were global.
func TestScopedAfterGlobalWarns(t *testing.T) {
	const conf = "listener 1883\nlistener 8883\nallow_anonymous false\npassword_file p\nmax_connections_per_ip 64\n"
	c, err := Parse("moat.conf", []byte(conf), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := "moat.conf:5: max_connections_per_ip applies to listener 8883 (moat.conf:2) only"
	if !slices.ContainsFunc(c.Warnings, func(w string) bool { return strings.HasPrefix(w, want) }) {
		t.Errorf("warnings %q lack %q", c.Warnings, want)
	}
	c, err = Parse("moat.conf", []byte("max_connections_per_ip 64\nlistener 1883\nmax_connections 10\nallow_anonymous false\npassword_file p\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range c.Warnings {
		if strings.Contains(w, "applies to listener") {
			t.Errorf("unexpected warning %q", w)
		}
	}
}
