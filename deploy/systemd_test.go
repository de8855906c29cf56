package deploy

import (
	"os"
	"strings"
	"testing"
)

func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("systemd/moat.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			keys[k] = v
		}
	}
	tests := []struct{ key, want string }{
		{"ExecStart", "/usr/local/bin/moat serve -c /etc/moat/moat.conf"},
		{"ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Restart", "on-failure"},
		{"LimitNOFILE", "1048576"},
		{"ProtectSystem", "strict"},
		{"ReadWritePaths", "/var/lib/moat /var/log/moat"},
		{"User", "moat"},
		{"AmbientCapabilities", ""},
		{"CapabilityBoundingSet", "CAP_SYS_ADMIN"},
		{"DeviceAllow", "/dev/fuse rw"},
		{"KillMode", "mixed"},
	}
	for _, tt := range tests {
		if got, ok := keys[tt.key]; !ok || got != tt.want {
			t.Errorf("%s=%q (set: %v), want %q", tt.key, got, ok, tt.want)
		}
	}
}
