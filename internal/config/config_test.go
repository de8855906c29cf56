package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, text string) (*Config, error) {
	t.Helper()
	return Parse("/etc/moat/moat.conf", []byte(text), nil)
}

func TestDefaultIsLocalOnly(t *testing.T) {
	c := Default()
	if !c.LocalOnly || len(c.Listeners) != 1 {
		t.Fatalf("want one local-only listener, got %+v", c.Listeners)
	}
	l := c.Listeners[0]
	if l.Bind != "127.0.0.1" || l.Port != 1883 || l.Protocol != "mqtt" || !l.Security.AllowAnonymous {
		t.Fatalf("default listener = %+v security %+v", l, l.Security)
	}
	if !c.StrictSubscribe || c.Limits.MaxPacketSize == 0 || c.Admin.Listener != "127.0.0.1:7883" {
		t.Fatalf("unsafe defaults: %+v", c)
	}
}

func TestMosquittoConfigs(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, c *Config)
	}{
		{"jzombie hardened", "listener 1883\nprotocol mqtt\nlistener 9001\nprotocol websockets\nallow_anonymous false\npassword_file /mosquitto/conf/passwd\nacl_file /mosquitto/config/aclfile\npersistence true\npersistence_location /mosquitto/data/\nautosave_interval 1\nautosave_on_changes true\npersistence_encryption off\n",
			func(t *testing.T, c *Config) {
				if len(c.Listeners) != 2 || c.Listeners[1].Protocol != "websockets" || c.Listeners[0].Protocol != "mqtt" {
					t.Fatalf("listeners %+v", c.Listeners)
				}
				if c.Security.AllowAnonymous || c.Security.PasswordFile != "/mosquitto/conf/passwd" || c.Security.ACLFile != "/mosquitto/config/aclfile" {
					t.Fatalf("security %+v", c.Security)
				}
				if !c.Persistence.Enabled || c.Persistence.AutosaveInterval != 1 || !c.Persistence.AutosaveOnChanges {
					t.Fatalf("persistence %+v", c.Persistence)
				}
				if c.Listeners[0].Security != c.Security {
					t.Fatal("listeners must share the global security without per_listener_settings")
				}
			}},
		{"dns-certbot with port and listener", "port 1883\nlistener 8883\ncertfile /etc/letsencrypt/live/x/cert.pem\nkeyfile /etc/letsencrypt/live/x/privkey.pem\ncafile /etc/ssl/certs/ca.pem\nlog_dest file /mosquitto/log/mosquitto.log\nlog_type all\nconnection_messages true\nlog_timestamp true\nwebsockets_log_level 0\npassword_file passwd\n",
			func(t *testing.T, c *Config) {
				if len(c.Listeners) != 2 || !c.Listeners[0].Implicit || c.Listeners[0].Port != 1883 {
					t.Fatalf("listeners %+v", c.Listeners)
				}
				if !c.Listeners[1].TLS.Enabled() || c.Listeners[1].ID != "mqtts::8883" {
					t.Fatalf("tls listener %+v", c.Listeners[1])
				}
				if c.Log.Dests[0].Path != "/mosquitto/log/mosquitto.log" || !c.Log.Types["all"] || !c.Log.ConnectionMessages {
					t.Fatalf("log %+v", c.Log)
				}
				if c.Security.PasswordFile != "/etc/moat/passwd" {
					t.Fatalf("relative password_file resolved to %q", c.Security.PasswordFile)
				}
				if c.Security.AllowAnonymous {
					t.Fatal("allow_anonymous must default to false once a listener is configured")
				}
			}},
		{"listener scoped settings follow the latest listener", "max_connections 10\nlistener 1883 127.0.0.1\nlistener 9001 127.0.0.1\nprotocol websockets\nmax_connections 5\nmax_connections_per_ip 3\nconnect_timeout 4\ntrusted_proxy 172.16.0.0/12\ntrusted_proxy ::1\nwebsockets_path /mqtt\nwebsockets_origin https://dash.example.com/\n",
			func(t *testing.T, c *Config) {
				a, b := c.Listeners[0], c.Listeners[1]
				if a.MaxConnections != 10 || b.MaxConnections != 5 || b.MaxConnectionsPerIP != 3 || b.ConnectTimeout != 4*time.Second || a.ConnectTimeout != 10*time.Second {
					t.Fatalf("scoped values: %+v %+v", a, b)
				}
				if len(b.TrustedProxies) != 2 || b.TrustedProxies[1].String() != "::1/128" || b.WebSocketOrigins[0] != "https://dash.example.com" || b.WebSocketPath != "/mqtt" {
					t.Fatalf("ws listener %+v", b)
				}
			}},
		{"per listener settings", "per_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\nlistener 8883\ncertfile c.pem\nkeyfile k.pem\npassword_file p\n",
			func(t *testing.T, c *Config) {
				a, b := c.Listeners[0], c.Listeners[1]
				if a.Security == b.Security || !a.Security.AllowAnonymous || b.Security.AllowAnonymous || b.Security.PasswordFile != "/etc/moat/p" || a.Security.PasswordFile != "" {
					t.Fatalf("per listener security: %+v / %+v", a.Security, b.Security)
				}
			}},
		{"moat settings", "admin_listener off\nlog_format json\nstrict_subscribe false\nacme_domain mqtt.example.com, b.example.com\nacme_email a@example.com\nacme_staging true\nacme_key_type ec384\nacme_dns_resolvers 127.0.0.1:53,[::1]:53\nacme_dns_propagation_check false\nlistener 8883\ntls acme\nmax_packet_size 4096\nmessage_size_limit 100 # bytes\nmax_keepalive 120\npersistence true\npersistence_location /data\npersistence_cipher_dir /cipher\npersistence_key_file /run/secrets/key\n",
			func(t *testing.T, c *Config) {
				if c.Admin.Listener != "" || c.Log.Format != "json" || c.StrictSubscribe {
					t.Fatalf("moat settings %+v", c)
				}
				if len(c.ACME.Domains) != 2 || !c.ACME.Staging || c.ACME.KeyType != "ec384" || len(c.ACME.DNSResolvers) != 2 || c.ACME.PropagationCheck {
					t.Fatalf("acme %+v", c.ACME)
				}
				if !c.UsesACME() || c.Limits.MaxPacketSize != 4096 || c.Limits.MessageSizeLimit != 100 || c.Limits.MaxKeepalive != 120 {
					t.Fatalf("limits %+v", c.Limits)
				}
				if !c.Persistence.Encrypted() {
					t.Fatal("encryption must default to gocryptfs")
				}
			}},
		{"comments and blanks", "# comment\n\n   # indented comment\nlistener 1883\r\n  allow_anonymous true  \n",
			func(t *testing.T, c *Config) {
				if !c.Security.AllowAnonymous {
					t.Fatal("allow_anonymous not read")
				}
			}},
		{"free port", "listener 0 127.0.0.1\n",
			func(t *testing.T, c *Config) {
				if c.Listeners[0].UnixPath != "" || c.Listeners[0].Bind != "127.0.0.1" || c.Listeners[0].Port != 0 {
					t.Fatalf("free port %+v", c.Listeners[0])
				}
			}},
		{"unix socket", "listener 0 /run/moat.sock\n",
			func(t *testing.T, c *Config) {
				if c.Listeners[0].UnixPath != "/run/moat.sock" || !c.Listeners[0].IsLoopback() {
					t.Fatalf("unix %+v", c.Listeners[0])
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, tt.text)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestErrorsNameFileAndLine(t *testing.T) {
	tests := []struct{ text, want string }{
		{"listener 1883\nfoo bar\n", "moat.conf:2: unknown configuration variable \"foo\""},
		{"allow_anonymous yes\n", "moat.conf:1: value must be true or false"},
		{"plugin /usr/lib/x.so\n", "moat.conf:1: plugin: not supported by Moat"},
		{"auth_opt_backend files\n", "moat.conf:1: auth_opt_backend: not supported"},
		{"connection bridge1\naddress 1.2.3.4\n", "moat.conf:1: connection: not supported by Moat: bridges"},
		{"psk_file /x\n", "psk_file: not supported"},
		{"listener 8883\ncertfile /c\n", "moat.conf:2: certfile needs a keyfile"},
		{"listener 70000\n", "moat.conf:1: listener port must be 0-65535"},
		{"listener 1883\nlistener 1883\n", "moat.conf:2: listener mqtt::1883 is already defined at /etc/moat/moat.conf:1"},
		{"max_packet_size 10\n", "max_packet_size must be an integer from 20"},
		{"tls_version tlsv1.1\n", "Moat accepts TLS 1.2 or newer only"},
		{"listener 8883\ntls acme\n", "moat.conf:2: tls acme needs acme_domain"},
		{"persistence true\n", "persistence true needs persistence_location"},
		{"persistence true\npersistence_location /d\n", "needs persistence_key_file"},
		{"listener 1883\nper_listener_settings true\n", "per_listener_settings must come before"},
		{"listener 8883\ncertfile c\nkeyfile k\ncafile ca\nrequire_certificate true\nuse_identity_as_username true\n", "use_identity_as_username/use_subject_as_username are not supported"},
		{"crlfile /etc/crl.pem\n", "moat.conf:1: crlfile is not supported"},
		{"trusted_proxy nonsense\n", "trusted_proxy: \"nonsense\" is not an address or CIDR"},
		{"listener 1883\ntrusted_proxy 10.0.0.0/8\n", "trusted_proxy applies to websockets listeners only"},
		{"log_type verbose\n", "log_type \"verbose\""},
		{"password_file\n", "password_file needs a value"},
		{"include_dir /nonexistent-moat-dir\n", "moat.conf:1: include_dir:"},
	}
	for _, tt := range tests {
		_, err := parse(t, tt.text)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.text, err, tt.want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) && !strings.Contains(tt.text, "include_dir") {
			t.Errorf("%q: error does not wrap ErrInvalid", tt.text)
		}
	}
}

func TestAllErrorsReported(t *testing.T) {
	_, err := parse(t, "foo 1\nbar 2\nallow_anonymous maybe\n")
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{":1:", ":2:", ":3:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %s in %v", want, err)
		}
	}
}

func TestSecretsNotQuoted(t *testing.T) {
	// A value that might be a secret is never echoed.
	_, err := parse(t, "allow_anonymous s3cret-value\n")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error %v quotes the value", err)
	}
}

func TestIncludeDirSortedAndRelative(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "conf.d")
	if err := os.Mkdir(inc, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "moat.conf"), "listener 1883 127.0.0.1\ninclude_dir conf.d\n")
	write(filepath.Join(inc, "20-b.conf"), "max_connections 20\n")
	write(filepath.Join(inc, "10-a.conf"), "max_connections 10\npassword_file ../passwd\n")
	write(filepath.Join(inc, "ignored.txt"), "garbage\n")
	c, err := Load(filepath.Join(dir, "moat.conf"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listeners[0].MaxConnections != 20 {
		t.Fatalf("include order: max_connections %d, want 20 from the later file", c.Listeners[0].MaxConnections)
	}
	if c.Security.PasswordFile != filepath.Join(dir, "passwd") {
		t.Fatalf("password_file %q", c.Security.PasswordFile)
	}
	if len(c.Files) != 3 {
		t.Fatalf("files %v", c.Files)
	}
	write(filepath.Join(inc, "30-bad.conf"), "\nnope 1\n")
	if _, err := Load(filepath.Join(dir, "moat.conf"), nil); err == nil || !strings.Contains(err.Error(), "30-bad.conf:2: unknown") {
		t.Fatalf("error in included file: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	env := map[string]string{"DOMAIN": "mqtt.example.com,b.example.com", "EMAIL": "me@example.com", "DRYRUN": "1"}
	c, err := Parse("x.conf", []byte("listener 8883\ntls acme\n"), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ACME.Domains) != 2 || c.ACME.Email != "me@example.com" || !c.ACME.Staging {
		t.Fatalf("acme from env: %+v", c.ACME)
	}
	c, err = Parse("x.conf", []byte("acme_domain a.example.com\nacme_staging false\n"), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ACME.Domains) != 1 || c.ACME.Staging {
		t.Fatalf("file must win over env: %+v", c.ACME)
	}
}

func TestWarnings(t *testing.T) {
	c, err := parse(t, "listener 1883\npassword_file p\nallow_anonymous true\n")
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(c.Warnings, "\n")
	if !strings.Contains(joined, "clear text") || !strings.Contains(joined, "anonymous") {
		t.Fatalf("warnings: %v", c.Warnings)
	}
	c, err = parse(t, "listener 1883 127.0.0.1\npassword_file p\n")
	if err != nil || len(c.Warnings) != 0 {
		t.Fatalf("loopback listener warned: %v %v", c.Warnings, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"listener 1883\nprotocol websockets\n",
		"per_listener_settings true\nlistener 1 ::1\nallow_anonymous true\n",
		"port 1\nbind_address 127.0.0.1\nlistener 0 /s\n",
		"persistence true\npersistence_location d\npersistence_encryption off\n",
		"acme_domain a.b\nlistener 2\ntls acme\ntrusted_proxy 1.2.3.4\n",
		"persistent_client_expiration 2w\nmax_keepalive 60 # x\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.conf", data, nil)
		if err != nil {
			if c != nil {
				t.Fatal("an error must return no config")
			}
			return
		}
		if len(c.Listeners) == 0 {
			t.Fatal("a valid config has at least one listener")
		}
		for _, l := range c.Listeners {
			if l.Security == nil || l.ID == "" {
				t.Fatalf("listener incomplete: %+v", l)
			}
		}
	})
}
