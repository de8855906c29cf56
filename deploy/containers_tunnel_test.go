package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/containertest"
)

// cloudflaredHeaders are the headers cloudflared adds when it forwards a
// visitor's WebSocket to the origin.
func cloudflaredHeaders(visitor string) []string {
	return []string{
		"CF-Connecting-IP: " + visitor,
		"X-Forwarded-For: " + visitor,
		"X-Forwarded-Proto: https",
		"Cf-Ray: 8f1c2a3b4c5d6e7f-AMS",
		"Cf-Ipcountry: NL",
		`Cf-Visitor: {"scheme":"https"}`,
		"Cf-Warp-Tag-Id: 7d2a8c1e-3b4f-4e5a-9c6d-0e1f2a3b4c5d",
	}
}

// buildTool builds a static helper binary of this module for containers.
func buildTool(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	build := exec.Command("go", "build", "-trimpath", "-o", bin, pkg)
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v: %s", pkg, err, out)
	}
	return bin
}

// connectedIP is the address Moat logged for a client's connection.
func connectedIP(t *testing.T, logs, clientID string) string {
	t.Helper()
	for _, l := range strings.Split(logs, "\n") {
		var e struct {
			Msg    string `json:"msg"`
			Client string `json:"client"`
			IP     string `json:"ip"`
		}
		if json.Unmarshal([]byte(l), &e) == nil && e.Msg == "client connected" && e.Client == clientID {
			return e.IP
		}
	}
	t.Fatalf("no connection of %s in the log:\n%s", clientID, lastLines(logs, 10))
	return ""
}

func testTunnel(t *testing.T, p *containertest.Podman, tag string) {
	start := time.Now()
	dir := t.TempDir()
	user, pw := "sensor", "pw-"+randomHex(12)
	client := buildTool(t, "./internal/containertest/cmd/mqttws")
	mqttws := func(id string, publish bool, topic, payload string, hdrs []string) []string {
		cmd := []string{containertest.DebianImage, "/usr/local/bin/mqttws", "-url", "ws://moat:9001/mqtt",
			"-user", user, "-pass", pw, "-id", id, "-topic", topic, "-payload", payload}
		if publish {
			cmd = append(cmd, "-publish")
		}
		for _, h := range hdrs {
			cmd = append(cmd, "-H", h)
		}
		return cmd
	}
	topic := "sensor/tunnel-" + p.RunID
	payload := "via-the-tunnel-" + randomHex(8)
	visitor := "203.0.113.77"
	o := containertest.Overrides{
		// The older set-ups' variable name.
		Env:   map[string]string{"CLOUDFLARE_TUNNEL_TOKEN": "not-a-real-token-" + p.RunID},
		Image: tag,
		Binds: map[string]string{"/mosquitto/config/passwd": passwdFile(t, dir, user, pw)},
		// cloudflared's image is not available here: in its place, with
		// its compose settings (address, read-only, no capabilities), a
		// client that connects the way cloudflared forwards a visitor.
		StandIns:     map[string][]string{"cloudflared": mqttws("via-cloudflared", true, topic, payload, cloudflaredHeaders(visitor))},
		ExtraVolumes: map[string][]string{"cloudflared": {client + ":/usr/local/bin/mqttws:ro"}},
	}
	s := containertest.LoadStack(p, "tunnel", o)
	s.Up("moat")
	name := s.Container("moat")
	waitFor(t, 60*time.Second, "moat healthy", func() string {
		out, err := p.Try(time.Minute, "healthcheck", "run", name)
		if err != nil {
			return out + " " + err.Error() + "; errors: " + errorLines(p.Logs(name), 4)
		}
		return ""
	})
	t.Logf("tunnel stack healthy after %v", time.Since(start).Round(time.Millisecond))

	t.Run("cloudflared forwards a visitor", func(t *testing.T) {
		p := p.For(t)
		s := s.For(p)
		s.Start("cloudflared")
		cf := s.Container("cloudflared")
		code := p.Must(2*time.Minute, "wait", cf)
		if out := p.Logs(cf); code != "0" || !strings.Contains(out, "published "+topic) {
			t.Fatalf("client exited %s: %q", code, out)
		}
		env := p.Must(time.Minute, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", cf)
		if !strings.Contains(env, "TUNNEL_TOKEN=not-a-real-token-"+p.RunID+"\n") {
			t.Errorf("cloudflared did not get CLOUDFLARE_TUNNEL_TOKEN as TUNNEL_TOKEN")
		}
		ip := connectedIP(t, p.Logs(name), "via-cloudflared")
		t.Logf("through cloudflared (a trusted proxy): logged as %s", ip)
		if !strings.HasPrefix(ip, visitor) {
			t.Errorf("connection through the trusted cloudflared logged as %q, want the visitor %s (CF-Connecting-IP)", ip, visitor)
		}
	})
	t.Run("hostile CF-Connecting-IP through cloudflared", func(t *testing.T) {
		p := p.For(t)
		hostile := map[string][]string{"cloudflared": mqttws("hostile", false, topic, payload, []string{
			`CF-Connecting-IP: 203.0.113.9" ip=evil "x`, "X-Forwarded-For: 198.51.100.23", "Cf-Ray: 8f1c2a3b4c5d6e7f-AMS"})}
		o := o
		o.StandIns = hostile
		s := s.With(o).For(p)
		s.Start("cloudflared")
		cf := s.Container("cloudflared")
		if code := p.Must(2*time.Minute, "wait", cf); code != "0" {
			t.Fatalf("client exited %s: %s", code, p.Logs(cf))
		}
		logs := p.Logs(name)
		if strings.Contains(logs, "ip=evil") || strings.Contains(logs, "203.0.113.9") {
			t.Errorf("the unparsable CF-Connecting-IP reached the log: %s", lastLines(logs, 3))
		}
		if ip := connectedIP(t, logs, "hostile"); !strings.HasPrefix(ip, "198.51.100.23") {
			t.Errorf("unparsable CF-Connecting-IP: logged as %q, want X-Forwarded-For's 198.51.100.23", ip)
		}
	})
	t.Run("per-IP limit counts visitors, not cloudflared", func(t *testing.T) {
		p := p.For(t)
		// 200 connections at once from one visitor, all through the one
		// cloudflared; meanwhile another visitor connects.
		cmd := append(mqttws("flood", false, topic, payload, cloudflaredHeaders("203.0.113.50")), "-hold", "200", "-probe", "203.0.113.51")
		o := o
		o.StandIns = map[string][]string{"cloudflared": cmd}
		s := s.With(o).For(p)
		s.Start("cloudflared")
		cf := s.Container("cloudflared")
		if code := p.Must(3*time.Minute, "wait", cf); code != "0" {
			t.Fatalf("client exited %s: %s", code, p.Logs(cf))
		}
		out := p.Logs(cf)
		var accepted, n int
		for _, l := range strings.Split(out, "\n") {
			if _, err := fmt.Sscanf(l, "accepted %d of %d", &accepted, &n); err == nil {
				break
			}
		}
		t.Logf("one visitor, 200 connections at once: %d accepted (max_connections_per_ip 32)", accepted)
		if n != 200 || accepted < 1 || accepted > 32 {
			t.Errorf("accepted %d of %d, want 1..32: %s", accepted, n, out)
		}
		if !strings.Contains(out, "probe accepted") {
			t.Errorf("another visitor was refused while the first one flooded: %s", out)
		}
	})
	t.Run("untrusted peer's headers are ignored", func(t *testing.T) {
		p := p.For(t)
		peer := "172.30.57.3"
		args := []string{"run", "--rm", "--name", s.Project.Name + "-intruder", "--network", s.Network("edge") + ":ip=" + peer,
			"--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
			"--volume", client + ":/usr/local/bin/mqttws:ro"}
		p.Cleanup("container", s.Project.Name+"-intruder")
		args = append(args, mqttws("intruder", false, topic, payload, cloudflaredHeaders("198.51.100.66"))...)
		out := p.Must(2*time.Minute, args...)
		if !strings.Contains(out, "received "+topic) {
			t.Fatalf("client: %q", out)
		}
		ip := connectedIP(t, p.Logs(name), "intruder")
		t.Logf("from an untrusted peer claiming 198.51.100.66: logged as %s", ip)
		if !strings.HasPrefix(ip, peer) {
			t.Errorf("connection from the untrusted %s logged as %q: forged CF-Connecting-IP believed", peer, ip)
		}
	})
	t.Logf("deploy/tunnel checks took %v", time.Since(start).Round(time.Second))
}

// The tunnel stack takes the token under its own name or the older
// CLOUDFLARE_TUNNEL_TOKEN; its own name wins when both are set.
func TestTunnelTokenVariables(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"TUNNEL_TOKEN": "new-name"}, "new-name"},
		{map[string]string{"CLOUDFLARE_TUNNEL_TOKEN": "old-name"}, "old-name"},
		{map[string]string{"TUNNEL_TOKEN": "new-name", "CLOUDFLARE_TUNNEL_TOKEN": "old-name"}, "new-name"},
	}
	for _, tt := range tests {
		p, err := load(t, "tunnel", tt.env)
		if err != nil {
			t.Errorf("%v: %v", tt.env, err)
			continue
		}
		if got := p.Services["cloudflared"].Environment["TUNNEL_TOKEN"]; got == nil || *got != tt.want {
			t.Errorf("%v: cloudflared gets TUNNEL_TOKEN %v, want %q", tt.env, got, tt.want)
		}
	}
	_, err := load(t, "tunnel", map[string]string{})
	if err == nil || !strings.Contains(err.Error(), "TUNNEL_TOKEN") {
		t.Errorf("without a token: %v, want an error naming TUNNEL_TOKEN", err)
	}
}
