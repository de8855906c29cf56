// Package containertest runs Moat's image and compose stacks in a real
// container runtime (podman) for tests: it makes the base images the
// Dockerfile names without a registry, builds the image, turns compose
// services into podman commands, and removes everything it created.
package containertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/testenv"
)

const installHint = "apt-get install podman runc netavark aardvark-dns iptables debootstrap (or make deps)"

// Podman runs podman commands for one test.
type Podman struct {
	t       testing.TB
	bin     string
	global  []string // flags before the subcommand (--runtime)
	runtime string   // the runtime wrapper, "" for podman's default
	RunID   string   // unique per test run: names of everything created
	tempDir string
}

// New finds podman and prepares the runtime it must use here. Under CI=true
// a missing podman fails the test; elsewhere it skips.
func New(t testing.TB) *Podman {
	t.Helper()
	bin := testenv.LookPath(t, "podman", installHint)
	if os.Geteuid() != 0 {
		// The stacks need rootful podman (FUSE devices, volumes owned by
		// the image's uid) and the tests chown files to it.
		testenv.Missing(t, "root for podman", "run the container tests as root")
	}
	p := &Podman{t: t, bin: bin, RunID: randomID(), tempDir: t.TempDir()}
	if p.runtime = p.runtimeWrapper(); p.runtime != "" {
		p.global = append(p.global, "--runtime", p.runtime)
	}
	if _, err := p.Output(context.Background(), "info", "--format", "{{.Host.OCIRuntime.Name}}"); err != nil {
		testenv.Missing(t, "a working podman", err.Error()+"; "+installHint)
	}
	return p
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// runtimeWrapper returns the OCI runtime every command passes with
// --runtime: runc behind a wrapper that edits the container's spec. It
// drops process.rlimits, as some CI sandboxes forbid setrlimit inside
// containers (podman always writes rlimits; crun also fails on their hybrid
// cgroups); passing it per command leaves the host's podman configuration
// untouched. It also gives a non-root process no capabilities beyond the
// bounding set, as Docker does (podman 4 makes cap_add ambient for a
// non-root user), so the stacks run as `docker compose` runs them.
func (p *Podman) runtimeWrapper() string {
	runc := testenv.LookPath(p.t, "runc", "apt-get install runc")
	py := testenv.LookPath(p.t, "python3", "apt-get install python3")
	path := filepath.Join(p.tempDir, "runc-norlimit")
	script := "#!" + py + `
import json, os, sys
args = sys.argv[1:]
for i, a in enumerate(args):
    path = None
    if a in ("--bundle", "-b") and i + 1 < len(args):
        path = os.path.join(args[i + 1], "config.json")
    elif a.startswith("--bundle="):
        path = os.path.join(a.split("=", 1)[1], "config.json")
    elif a in ("--process", "-p") and i + 1 < len(args):
        path = args[i + 1]
    if path and os.path.isfile(path):
        with open(path) as f:
            spec = json.load(f)
        proc = spec.get("process", spec)
        proc.pop("rlimits", None)
        caps = proc.get("capabilities") or {}
        if proc.get("user", {}).get("uid", 0) != 0:
            for k in ("effective", "permitted", "inheritable", "ambient"):
                caps.pop(k, None)
        with open(path, "w") as f:
            json.dump(spec, f)
os.execv(` + fmt.Sprintf("%q", runc) + `, ["runc"] + args)
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		p.t.Fatalf("runtime wrapper: %v", err)
	}
	return path
}

// Cmd is a podman command with the runtime flags.
func (p *Podman) Cmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, p.bin, append(append([]string(nil), p.global...), args...)...)
}

// Output runs podman and returns its trimmed stdout; the error carries stderr.
func (p *Podman) Output(ctx context.Context, args ...string) (string, error) {
	cmd := p.Cmd(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("podman %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Must runs podman with a deadline and fails the test on error.
func (p *Podman) Must(d time.Duration, args ...string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := p.Output(ctx, args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// Try runs podman with a deadline and returns its output and error.
func (p *Podman) Try(d time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return p.Output(ctx, args...)
}

// Exists reports whether `podman KIND exists NAME` says so.
func (p *Podman) Exists(kind, name string) bool {
	_, err := p.Try(30*time.Second, kind, "exists", name)
	return err == nil
}

// Cleanup removes a container, volume or network at the end of the test,
// also when it fails. kind is "container", "volume" or "network".
func (p *Podman) Cleanup(kind, name string) {
	p.t.Cleanup(func() {
		args := []string{kind, "rm", "-f"}
		if kind == "container" {
			args = append(args, "-v", "-t", "0") // -v: with the image's anonymous volumes
		}
		// A container its restart policy is restarting can refuse the
		// first removal.
		var err error
		for range 5 {
			if _, err = p.Try(time.Minute, append(args, name)...); err == nil || !p.Exists(kind, name) {
				return
			}
			time.Sleep(time.Second)
		}
		p.t.Errorf("cleanup: %v", err)
	})
}

// Logs returns a container's output (stdout and stderr).
func (p *Podman) Logs(name string) string {
	cmd := p.Cmd(context.Background(), "logs", name)
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// State is a container's state as podman inspect shows it.
func (p *Podman) State(name string) (status string, startedAt string, err error) {
	out, err := p.Try(30*time.Second, "inspect", "-f", "{{.State.Status}} {{.State.StartedAt}}", name)
	if err != nil {
		return "", "", err
	}
	status, startedAt, _ = strings.Cut(out, " ")
	return status, startedAt, nil
}

// HostPort is the 127.0.0.1 address a published container port answers on.
func (p *Podman) HostPort(name string, port string) string {
	p.t.Helper()
	out := p.Must(30*time.Second, "port", name, port+"/tcp")
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "127.0.0.1:") {
			return strings.TrimSpace(l)
		}
	}
	p.t.Fatalf("container %s: port %s not published on 127.0.0.1: %q", name, port, out)
	return ""
}

// For returns a Podman that reports to t (a subtest): failing helpers must
// run on the goroutine of the test they fail.
func (p *Podman) For(t testing.TB) *Podman {
	q := *p
	q.t = t
	return &q
}

// IP is a container's address on a network.
func (p *Podman) IP(container, network string) string {
	p.t.Helper()
	ip := p.Must(30*time.Second, "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", network), container)
	if ip == "" || ip == "<no value>" {
		p.t.Fatalf("container %s has no address on %s", container, network)
	}
	return ip
}
