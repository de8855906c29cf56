package deploy

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/moat-mqtt/moat/internal/config"
)

// deployment is one compose file and what it must look like.
type deployment struct {
	dir string
	// required are the variables the compose file documents as mandatory
	// (${VAR:?...}); loading without them must fail naming one of them.
	required []string
	// published is the exact set of host ports; nil means none at all.
	published []string
}

var deployments = []deployment{
	{dir: "direct", required: []string{"DOMAIN", "EMAIL"}, published: []string{"8083", "8883"}},
	{dir: "tunnel", required: []string{"TUNNEL_TOKEN"}, published: nil},
	{dir: "homeassistant", published: []string{"1883"}},
}

// testEnv resolves every documented variable with a harmless value.
var testEnv = map[string]string{
	"DOMAIN":       "mqtt.example.com",
	"EMAIL":        "admin@example.com",
	"TUNNEL_TOKEN": "not-a-real-token",
}

func load(t *testing.T, dir string, env map[string]string) (*types.Project, error) {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	return loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  abs,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(abs, "compose.yaml")}},
		Environment: env,
	}, func(o *loader.Options) { o.SetProjectName("moat-test-"+dir, true) })
}

func TestComposeRequiredVariables(t *testing.T) {
	for _, d := range deployments {
		t.Run(d.dir, func(t *testing.T) {
			_, err := load(t, d.dir, map[string]string{})
			if len(d.required) == 0 {
				if err != nil {
					t.Fatalf("loads without environment? %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded without %v", d.required)
			}
			if !slices.ContainsFunc(d.required, func(v string) bool { return strings.Contains(err.Error(), v) }) {
				t.Fatalf("error does not name a documented required variable %v: %v", d.required, err)
			}
		})
	}
}

// versionTag is what a pulled image's tag must look like: a release number.
var versionTag = regexp.MustCompile(`^v?[0-9]+(\.[0-9]+)+`)

func TestCompose(t *testing.T) {
	for _, d := range deployments {
		t.Run(d.dir, func(t *testing.T) {
			p, err := load(t, d.dir, testEnv)
			if err != nil {
				t.Fatal(err)
			}
			checkImages(t, p)
			checkFiles(t, p)
			checkPorts(t, p, d.published)
			checkFUSE(t, p)
		})
	}
}

// checkImages: every image carries a version tag; none is latest.
func checkImages(t *testing.T, p *types.Project) {
	t.Helper()
	for name, s := range p.Services {
		img := s.Image
		if img == "" {
			t.Errorf("service %s: no image name (a build needs a tagged image)", name)
			continue
		}
		_, tag, ok := strings.Cut(img[strings.LastIndex(img, "/")+1:], ":")
		if !ok || tag == "" || strings.Contains(tag, "latest") {
			t.Errorf("service %s: image %q is not pinned to a version", name, img)
		}
		if s.Build == nil && (tag == "local" || !versionTag.MatchString(tag)) {
			t.Errorf("service %s: pulled image %q must be pinned to a release version", name, img)
		}
	}
}

// checkFiles: every bind-mounted file and secret exists in the repository.
func checkFiles(t *testing.T, p *types.Project) {
	t.Helper()
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s: bind mount source %s: %v", name, v.Source, err)
			}
		}
		for _, sec := range s.Secrets {
			def, ok := p.Secrets[sec.Source]
			if !ok {
				t.Errorf("service %s: secret %s is not defined", name, sec.Source)
				continue
			}
			if def.File == "" {
				t.Errorf("secret %s: not file-based", sec.Source)
				continue
			}
			if _, err := os.Stat(def.File); err != nil {
				t.Errorf("secret %s: %v", sec.Source, err)
			}
		}
	}
}

func checkPorts(t *testing.T, p *types.Project, want []string) {
	t.Helper()
	var got []string
	for _, s := range p.Services {
		for _, port := range s.Ports {
			got = append(got, port.Published)
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("published ports %v, want %v", got, want)
	}
}

// checkFUSE: /dev/fuse and SYS_ADMIN appear on a service iff it runs Moat
// with encrypted persistence on; apparmor:unconfined goes with them.
func checkFUSE(t *testing.T, p *types.Project) {
	t.Helper()
	for name, s := range p.Services {
		hasDev := slices.ContainsFunc(s.Devices, func(d types.DeviceMapping) bool { return d.Source == "/dev/fuse" })
		hasCap := slices.Contains(s.CapAdd, "SYS_ADMIN")
		unconfined := slices.Contains(s.SecurityOpt, "apparmor:unconfined")
		noNewPriv := slices.Contains(s.SecurityOpt, "no-new-privileges:true")
		encrypted := false
		if conf := moatConfig(s); conf != "" {
			cfg, err := config.Load(conf, func(k string) string { return testEnv[k] })
			if err != nil {
				t.Fatalf("service %s: %s: %v", name, conf, err)
			}
			encrypted = cfg.Persistence.Encrypted()
		}
		if hasDev != encrypted || hasCap != encrypted || unconfined != encrypted {
			t.Errorf("service %s: /dev/fuse=%v SYS_ADMIN=%v apparmor:unconfined=%v, want all %v (encrypted persistence)",
				name, hasDev, hasCap, unconfined, encrypted)
		}
		if encrypted && noNewPriv {
			t.Errorf("service %s: no-new-privileges would stop the setuid fusermount3", name)
		}
		if !encrypted && !noNewPriv && s.NetworkMode != "host" {
			t.Errorf("service %s: needs no privileges, set no-new-privileges:true", name)
		}
	}
}

// moatConfig is the host path of the file a service mounts as Moat's config.
func moatConfig(s types.ServiceConfig) string {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == "/mosquitto/config/mosquitto.conf" {
			return v.Source
		}
	}
	return ""
}

func TestMoatConfigsParse(t *testing.T) {
	files, err := filepath.Glob("*/moat.conf")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../sample/homeassistant/moat.conf")
	if len(files) < 3 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		if _, err := config.Load(f, func(k string) string { return testEnv[k] }); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestTunnelTrustsCloudflared(t *testing.T) {
	p, err := load(t, "tunnel", testEnv)
	if err != nil {
		t.Fatal(err)
	}
	cf, ok := p.Services["cloudflared"]
	if !ok {
		t.Fatal("no cloudflared service")
	}
	if strings.Contains(strings.Join(cf.Command, " "), "token") {
		t.Errorf("cloudflared gets its token on the command line: %q", cf.Command)
	}
	if cf.Environment["TUNNEL_TOKEN"] == nil {
		t.Error("cloudflared has no TUNNEL_TOKEN in its environment")
	}
	cfg, err := config.Load(moatConfig(p.Services["moat"]), nil)
	if err != nil {
		t.Fatal(err)
	}
	var origin *config.Listener
	for _, l := range cfg.Listeners {
		if l.Port == 9001 {
			origin = l
		}
	}
	if origin == nil || origin.Protocol != "websockets" {
		t.Fatal("no WebSocket listener on 9001")
	}
	for netName, n := range cf.Networks {
		if n == nil || n.Ipv4Address == "" {
			t.Fatalf("cloudflared has no fixed address on %s", netName)
		}
		addr, err := netip.ParseAddr(n.Ipv4Address)
		if err != nil {
			t.Fatal(err)
		}
		trusted := slices.ContainsFunc(origin.TrustedProxies, func(pf netip.Prefix) bool { return pf.Contains(addr) })
		if !trusted {
			t.Errorf("moat does not trust cloudflared's address %s (trusted_proxy %v)", n.Ipv4Address, origin.TrustedProxies)
		}
	}
}
