package deploy

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/containertest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// directStack is deploy/direct with encrypted persistence, its
// certificates from the ACME harness on the stack's network.
type directStack struct {
	p        *containertest.Podman
	s        *containertest.Stack
	acme     *acmeHarness
	user, pw string
	domain   string
}

func newDirectStack(t *testing.T, p *containertest.Podman, tag string) *directStack {
	t.Helper()
	dir := t.TempDir()
	secrets := t.TempDir()
	ownedFile(t, secrets+"/moat_persistence_key", []byte(randomHex(32)+"\n"), 0o400)
	ownedFile(t, secrets+"/cloudflare_dns_api_token", []byte(acmetest.Token+"\n"), 0o400)
	d := &directStack{p: p, user: "sensor", pw: "pw-" + randomHex(12), domain: "mqtt." + acmetest.Zone}
	o := containertest.Overrides{
		Env: map[string]string{
			"DOMAIN":       d.domain,
			"EMAIL":        "ops@" + acmetest.Zone,
			"MOAT_SECRETS": secrets,
		},
		Image:   tag,
		Binds:   map[string]string{"/mosquitto/config/passwd": passwdFile(t, dir, d.user, d.pw)},
		Devices: map[string]string{"/dev/fuse": fuseNode(t)},
	}
	d.s = containertest.LoadStack(p, "direct", o)
	d.s.Prepare("moat")
	d.acme = startACMEHarness(t, p, d.s.Network("default"))
	// Loaded again with the harness in place: same project name, same
	// networks and volumes.
	o.Binds["/mosquitto/config/mosquitto.conf"] = confCopy(t, "direct/moat.conf", dir, d.acme.conf()...)
	o.ExtraEnv = map[string]map[string]string{"moat": d.acme.env()}
	o.ExtraVolumes = map[string][]string{"moat": {d.acme.volume()}}
	d.s = d.s.With(o)
	return d
}

func (d *directStack) name() string { return d.s.Container("moat") }

// dialTLS connects an MQTT client over TLS on 8883, verifying the
// certificate against the harness's root.
func (d *directStack) dial(addr, id string, autoAck bool) (*mqtttest.Client, error) {
	conn, err := tls.Dial("tcp", addr, d.acme.tlsConfig(d.domain))
	if err != nil {
		return nil, err
	}
	c, ack, err := mqtttest.Connect(conn, mqtttest.Options{ClientID: id, Username: d.user, Password: d.pw, AutoAck: autoAck, Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	if ack.ReasonCode != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK 0x%02x", ack.ReasonCode)
	}
	return c, nil
}

// waitReady waits until the container's Moat logged the encrypted mount
// (at least mounts times in this container's log) and serves MQTT over
// TLS with a verified certificate on the published 8883.
func (d *directStack) waitReady(t *testing.T, mounts int) string {
	t.Helper()
	var addr string
	waitFor(t, 90*time.Second, "moat ready", func() string {
		logs := d.p.Logs(d.name())
		if n := strings.Count(logs, "encrypted directory mounted"); n < mounts {
			st, _, _ := d.p.State(d.name())
			return "state " + st + ", mounted " + itoa(n) + " times; errors: " + errorLines(logs, 6)
		}
		if addr == "" {
			addr = d.p.HostPort(d.name(), "8883")
		}
		c, err := d.dial(addr, "probe", false)
		if err != nil {
			return err.Error() + "; errors: " + errorLines(logs, 4)
		}
		c.Close()
		return ""
	})
	return addr
}

func (d *directStack) publish(t *testing.T, addr, topic, payload string) {
	t.Helper()
	c, err := d.dial(addr, "pub-"+randomHex(4), false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if a := c.Publish(t, topic, []byte(payload), 1, true); a.Code != 0 {
		t.Fatalf("PUBACK code 0x%02x", a.Code)
	}
	c.Disconnect()
}

// retained asserts the broker holds payload as topic's retained message.
func (d *directStack) retained(t *testing.T, c *mqtttest.Client, topic, payload, after string) {
	t.Helper()
	defer c.Close()
	c.MustSubscribe(t, 1, topic)
	if !c.WaitTopic(topic) {
		t.Fatalf("after %s: retained message on %s lost", after, topic)
	}
	pk, _ := c.Message(topic)
	if string(pk.Payload) != payload || !pk.FixedHeader.Retain || pk.FixedHeader.Qos != 1 {
		t.Fatalf("after %s: got %q retain=%v qos=%d, want %q retained at QoS 1", after, pk.Payload, pk.FixedHeader.Retain, pk.FixedHeader.Qos, payload)
	}
}

func (d *directStack) retainedTLS(t *testing.T, addr, topic, payload, after string) {
	t.Helper()
	c, err := d.dial(addr, "sub-"+randomHex(4), true)
	if err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
	d.retained(t, c, topic, payload, after)
}

func testDirect(t *testing.T, p *containertest.Podman, tag string) {
	start := time.Now()
	d := newDirectStack(t, p, tag)
	d.s.Up("moat")
	name := d.name()
	addr := d.waitReady(t, 1)
	t.Logf("started with a certificate in %v", time.Since(start).Round(time.Millisecond))

	t.Run("hardening", func(t *testing.T) {
		out := p.For(t).Must(time.Minute, "inspect", "-f",
			"{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}}", name)
		if out != "true 1883:1883 [] [CAP_SYS_ADMIN]" && !strings.HasPrefix(out, "true 1883:1883 ") {
			t.Errorf("inspect: %s", out)
		}
		status := p.For(t).Must(time.Minute, "exec", name, "cat", "/proc/1/status")
		for _, want := range []string{"Uid:\t1883\t1883\t1883\t1883", "CapEff:\t0000000000000000", "CapBnd:\t0000000000200000", "NoNewPrivs:\t0"} {
			if !strings.Contains(status, want) {
				t.Errorf("/proc/1/status lacks %q:\n%s", want, status)
			}
		}
		if _, err := p.Try(time.Minute, "exec", name, "touch", "/usr/local/bin/x"); err == nil {
			t.Error("root file system is writable")
		}
		mounts := p.For(t).Must(time.Minute, "exec", name, "cat", "/proc/self/mountinfo")
		var data []string
		for _, l := range strings.Split(mounts, "\n") {
			if strings.Contains(l, " /mosquitto/data ") {
				data = append(data, l)
			}
		}
		// The compose file's tmpfs owned by 1883, the plaintext view on top.
		if len(data) != 2 || !strings.Contains(data[0], " - tmpfs ") || !strings.Contains(data[0], "uid=1883,gid=1883") ||
			!strings.Contains(data[1], " - fuse.gocryptfs /mosquitto/encrypted ") {
			t.Errorf("mounts on /mosquitto/data: want the tmpfs and gocryptfs over it:\n%s", strings.Join(data, "\n"))
		}
	})

	topic := "sensor/retained-" + p.RunID
	payload := "plaintext-payload-" + randomHex(16)
	d.publish(t, addr, topic, payload)
	d.retainedTLS(t, addr, topic, payload, "publish")

	t.Run("restart", func(t *testing.T) {
		p.For(t).Must(2*time.Minute, "restart", name)
		addr := d.waitReady(t, 2)
		d.retainedTLS(t, addr, topic, payload, "podman restart")
	})
	t.Run("kill", func(t *testing.T) {
		p := p.For(t)
		_, before, _ := p.State(name)
		p.Must(time.Minute, "kill", "-s", "KILL", name)
		// restart: unless-stopped may bring it back by itself.
		waitFor(t, 30*time.Second, "container after SIGKILL", func() string {
			st, at, err := p.State(name)
			switch {
			case err != nil:
				return err.Error()
			case st == "running" && at != before:
				return ""
			case st == "exited" || st == "stopped":
				if _, err := p.Try(time.Minute, "start", name); err != nil {
					return err.Error()
				}
			}
			return "state " + st
		})
		addr := d.waitReady(t, 1)
		d.retainedTLS(t, addr, topic, payload, "podman kill -s KILL")
	})
	t.Run("recreate", func(t *testing.T) {
		d.s.Start("moat")
		addr := d.waitReady(t, 1)
		d.retainedTLS(t, addr, topic, payload, "re-created container")
	})
	t.Run("WSS 8083", func(t *testing.T) {
		wss := p.For(t).HostPort(name, "8083")
		ws, err := mqtttest.DialWS("wss://"+wss+"/mqtt", d.acme.tlsConfig(d.domain))
		if err != nil {
			t.Fatal(err)
		}
		chain := ws.TLS().VerifiedChains
		if len(chain) == 0 || chain[0][0].Subject.CommonName != d.domain && !slices.Contains(chain[0][0].DNSNames, d.domain) {
			t.Fatalf("WSS certificate not verified for %s: %v", d.domain, chain)
		}
		c, ack, err := mqtttest.Connect(ws, mqtttest.Options{ClientID: "wss-" + randomHex(4), Username: d.user, Password: d.pw, AutoAck: true})
		if err != nil || ack.ReasonCode != 0 {
			t.Fatalf("MQTT over WSS: %v (CONNACK %d)", err, ack.ReasonCode)
		}
		d.retained(t, c, topic, payload, "WSS connect")
	})
	t.Run("cipher volume holds no plaintext", func(t *testing.T) {
		dir := p.For(t).Must(time.Minute, "volume", "inspect", "-f", "{{.Mountpoint}}", d.s.Volume("cipher"))
		if hits := grepTree(t, dir, payload, topic); len(hits) > 0 {
			t.Errorf("plaintext in the cipher volume: %v", hits)
		}
	})
	t.Run("healthcheck", func(t *testing.T) {
		p := p.For(t)
		waitFor(t, 60*time.Second, "healthy", func() string {
			out, err := p.Try(time.Minute, "healthcheck", "run", name)
			if err != nil {
				return err.Error() + " " + out
			}
			return ""
		})
		// Kill gocryptfs with its cipher directory made unreadable: the
		// mount dies under the running broker and cannot come back.
		p.Must(time.Minute, "exec", name, "chmod", "000", "/mosquitto/encrypted")
		pids := p.Must(time.Minute, "top", name, "hpid", "comm")
		killed := false
		for _, l := range strings.Split(pids, "\n") {
			f := strings.Fields(l)
			if len(f) == 2 && f[1] == "gocryptfs" {
				if _, err := runCmd(t, "kill", "-9", f[0]); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
		if !killed {
			t.Fatalf("no gocryptfs process in the container:\n%s", pids)
		}
		waitFor(t, 60*time.Second, "unhealthy after the mount died", func() string {
			if out, err := p.Try(time.Minute, "healthcheck", "run", name); err == nil {
				return "still healthy: " + out
			}
			return ""
		})
		t.Logf("logs after the mount died: %s", lastLines(p.Logs(name), 10))
		// Once the directory is usable again Moat remounts, re-opens its
		// store and reports healthy without a restart.
		p.Must(time.Minute, "exec", name, "chmod", "700", "/mosquitto/encrypted")
		waitFor(t, 90*time.Second, "healthy again after the remount", func() string {
			out, err := p.Try(time.Minute, "healthcheck", "run", name)
			if err != nil {
				return err.Error() + " " + out
			}
			return ""
		})
	})
	t.Logf("deploy/direct checks took %v", time.Since(start).Round(time.Second))
}

// With one thing missing from what the compose file sets up, Moat does not
// start and names that cause and its fix.
func testDirectFUSEDiagnostics(t *testing.T, p *containertest.Podman, tag string) {
	strict := filepath.Join(t.TempDir(), "fuse")
	if err := unix.Mknod(strict, unix.S_IFCHR|0o600, int(unix.Mkdev(10, 229))); err != nil {
		t.Fatalf("mknod: %v", err)
	}
	os.Chmod(strict, 0o600)
	tests := []struct {
		name   string
		device string   // /dev/fuse node
		args   []string // added to podman run
		says   []string
	}{
		{"no-new-privileges", fuseNode(t), []string{"--security-opt", "no-new-privileges"},
			[]string{"no-new-privileges is set", "remove no-new-privileges"}},
		{"device node 0600", strict, nil,
			[]string{"/dev/fuse is mode 0600 owned by 0:0 and Moat runs as uid 1883", "mode 0666"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := p.For(t)
			dir, secrets := t.TempDir(), t.TempDir()
			ownedFile(t, secrets+"/moat_persistence_key", []byte(randomHex(32)+"\n"), 0o400)
			ownedFile(t, secrets+"/cloudflare_dns_api_token", []byte("not-a-real-token\n"), 0o400)
			s := containertest.LoadStack(p, "direct", containertest.Overrides{
				Env:   map[string]string{"DOMAIN": "mqtt.example.test", "EMAIL": "ops@example.test", "MOAT_SECRETS": secrets},
				Image: tag,
				Binds: map[string]string{
					// Never Let's Encrypt from a test: a closed port.
					"/mosquitto/config/mosquitto.conf": confCopy(t, "direct/moat.conf", dir, "acme_directory https://127.0.0.1:1/directory"),
				},
				Devices:   map[string]string{"/dev/fuse": tt.device},
				ExtraArgs: map[string][]string{"moat": tt.args},
			})
			s.Up("moat")
			name := s.Container("moat")
			waitFor(t, 60*time.Second, "moat refusing to start", func() string {
				logs := p.Logs(name)
				for _, l := range strings.Split(logs, "\n") {
					if strings.Contains(l, "cannot start") {
						for _, w := range tt.says {
							if !strings.Contains(l, w) {
								t.Fatalf("start-up error does not say %q: %s", w, l)
							}
						}
						return ""
					}
				}
				return "no start-up error yet: " + lastLines(logs, 3)
			})
		})
	}
}
