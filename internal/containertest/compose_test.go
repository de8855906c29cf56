package containertest

import (
	"slices"
	"strings"
	"testing"
)

// pairs reports whether args holds flag followed by value.
func pairs(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func TestRunArgsFollowTheComposeFile(t *testing.T) {
	p := &Podman{t: t, RunID: "test"}
	env := map[string]string{"DOMAIN": "d.example", "EMAIL": "e@example", "MOAT_SECRETS": "/s", "TUNNEL_TOKEN": "tok"}
	direct := LoadStack(p, "../../deploy/direct", Overrides{
		Env: env, Image: "localhost/moat:t",
		Binds:   map[string]string{"/mosquitto/config/passwd": "/copy/passwd"},
		Devices: map[string]string{"/dev/fuse": "/node/fuse"},
	})
	args := direct.RunArgs("moat")
	for _, w := range [][2]string{
		{"--name", "moat-direct-test-moat"},
		{"--cap-drop", "ALL"}, {"--cap-add", "SYS_ADMIN"},
		{"--security-opt", "apparmor=unconfined"},
		{"--publish", "127.0.0.1::8883/tcp"}, {"--publish", "127.0.0.1::8083/tcp"},
		{"--tmpfs", "/tmp"}, {"--tmpfs", "/mosquitto/data:mode=0755,U"},
		{"--device", "/node/fuse:/dev/fuse:rwm"},
		{"--volume", "/copy/passwd:/mosquitto/config/passwd:ro"},
		{"--volume", "moat-direct-test_cipher:/mosquitto/encrypted"},
		{"--volume", "/s/moat_persistence_key:/run/secrets/moat_persistence_key:ro"},
		{"--env", "DOMAIN=d.example"},
		{"--ulimit", "nofile=65536:65536"},
		{"--stop-timeout", "30"},
		{"--restart", "unless-stopped"},
	} {
		if !pairs(args, w[0], w[1]) {
			t.Errorf("direct: no %s %s in %q", w[0], w[1], args)
		}
	}
	if !slices.Contains(args, "--read-only") || !slices.Contains(args, "--read-only-tmpfs=false") {
		t.Errorf("direct: read_only not translated as Docker does it: %q", args)
	}
	if args[len(args)-1] != "localhost/moat:t" {
		t.Errorf("direct: built service does not run the given image: %q", args)
	}
	for _, a := range args {
		if strings.HasPrefix(a, "0.0.0.0") || strings.Contains(a, "::8883:") {
			t.Errorf("direct: a port published beyond 127.0.0.1: %q", a)
		}
	}

	tunnel := LoadStack(p, "../../deploy/tunnel", Overrides{Env: env, Image: "localhost/moat:t",
		StandIns: map[string][]string{"cloudflared": {"img", "cmd"}}})
	cf := tunnel.RunArgs("cloudflared")
	if !pairs(cf, "--network", "moat-tunnel-test_edge:alias=cloudflared,ip=172.30.57.2") {
		t.Errorf("tunnel: cloudflared's network, alias and address: %q", cf)
	}
	if !pairs(cf, "--security-opt", "no-new-privileges=true") || slices.Contains(cf, "--restart") {
		t.Errorf("tunnel: stand-in keeps the security options and runs once: %q", cf)
	}
	if !slices.Equal(cf[len(cf)-2:], []string{"img", "cmd"}) {
		t.Errorf("tunnel: stand-in image and command: %q", cf)
	}
}

func TestPodmanTmpfs(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp":                           "/tmp",
		"/d:uid=1883,gid=1883,mode=0755": "/d:mode=0755,U",
		"/d:size=1m":                     "/d:size=1m",
		"/d:uid=1,size=1m,gid=1,noexec":  "/d:size=1m,noexec,U",
	} {
		if got := podmanTmpfs(in); got != want {
			t.Errorf("podmanTmpfs(%q) = %q, want %q", in, got, want)
		}
	}
}
