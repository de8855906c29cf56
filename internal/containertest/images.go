package containertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// The images the Dockerfile's FROM lines name (a test in deploy checks they
// agree). Without a registry, EnsureBaseImages makes local stand-ins under
// exactly these names, so the Dockerfile builds unchanged.
const (
	DebianImage = "docker.io/library/debian:12.12-slim"
	GolangImage = "docker.io/library/golang:1.26.8-bookworm"
	// debianSuite is the Debian release of DebianImage.
	debianSuite = "bookworm"
)

// EnsureBaseImages makes DebianImage and GolangImage unless they exist: a
// Debian root from debootstrap, and that root plus make, git and this
// machine's Go toolchain. Made once; later runs find them by name.
func (p *Podman) EnsureBaseImages() {
	p.t.Helper()
	if !p.Exists("image", DebianImage) {
		p.makeDebian()
	}
	if !p.Exists("image", GolangImage) {
		p.makeGolang()
	}
}

func (p *Podman) makeDebian() {
	p.t.Helper()
	deboot := testenv.LookPath(p.t, "debootstrap", "apt-get install debootstrap")
	dir, err := os.MkdirTemp("", "moat-debootstrap-")
	if err != nil {
		p.t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "root")
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, deboot, "--variant=minbase", debianSuite, root, debianMirror())
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("debootstrap: %v: %s", err, tail(out))
	}
	// An empty apt list directory and no machine-specific files, as in the
	// official slim image.
	for _, f := range []string{"etc/hostname", "etc/resolv.conf"} {
		os.Remove(filepath.Join(root, f))
	}
	tar := exec.CommandContext(ctx, "tar", "-C", root, "-c", ".")
	imp := p.Cmd(ctx, "import", "-", DebianImage)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	imp.Stdin = pipe
	var stderr bytes.Buffer
	imp.Stderr = &stderr
	if err := tar.Start(); err != nil {
		p.t.Fatal(err)
	}
	if err := imp.Run(); err != nil {
		p.t.Fatalf("podman import: %v: %s", err, stderr.String())
	}
	if err := tar.Wait(); err != nil {
		p.t.Fatalf("tar: %v", err)
	}
	p.t.Logf("made %s with debootstrap in %v", DebianImage, time.Since(start).Round(time.Second))
}

// debianMirror is the first Debian mirror apt is configured with.
func debianMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			fl := strings.Fields(l)
			switch {
			case len(fl) >= 3 && fl[0] == "deb" && !strings.Contains(l, "security"):
				u := fl[1]
				if strings.HasPrefix(u, "[") {
					u = fl[2]
				}
				return u
			case len(fl) >= 2 && fl[0] == "URIs:" && !strings.Contains(fl[1], "security"):
				return fl[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// makeGolang builds the golang stand-in: the Debian image plus the build
// tools and the Go toolchain this test runs with, copied from a read-only
// bind mount.
func (p *Podman) makeGolang() {
	p.t.Helper()
	goroot := runtime.GOROOT()
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		goroot = strings.TrimSpace(string(out))
	}
	dir := p.t.TempDir()
	containerfile := fmt.Sprintf(`FROM %s
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && cp -a /goroot-host /usr/local/go
ENV GOPATH=/go PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Modules come only from the module cache Build mounts read-only.
ENV GOFLAGS=-mod=mod GOPROXY=off
WORKDIR /go
`, DebianImage)
	if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(containerfile), 0o644); err != nil {
		p.t.Fatal(err)
	}
	start := time.Now()
	p.Must(15*time.Minute, p.buildArgs("-v", goroot+":/goroot-host:ro", "-t", GolangImage, "-f", filepath.Join(dir, "Containerfile"), dir)...)
	p.t.Logf("made %s in %v", GolangImage, time.Since(start).Round(time.Second))
}

// Build builds the Dockerfile in repo as tag, passing VERSION. Modules come
// from the host's module cache (read-only, no network), and the host's
// build cache is shared so unchanged packages are not compiled again.
func (p *Podman) Build(repo, tag, version string) {
	p.t.Helper()
	p.EnsureBaseImages()
	env := func(k string) string {
		out, err := exec.Command("go", "env", k).Output()
		if err != nil {
			p.t.Fatalf("go env %s: %v", k, err)
		}
		return strings.TrimSpace(string(out))
	}
	// The Dockerfile's `go mod download` wants every module in go.sum,
	// more than a build fetches: fill the host's cache first (a no-op when
	// it is complete), as the build can only read it.
	dl := exec.Command("go", "mod", "download")
	dl.Dir = repo
	if out, err := dl.CombinedOutput(); err != nil {
		p.t.Fatalf("go mod download: %v: %s", err, tail(out))
	}
	start := time.Now()
	p.Must(15*time.Minute, p.buildArgs("--build-arg", "VERSION="+version,
		"-v", env("GOMODCACHE")+":/go/pkg/mod:ro",
		"-v", env("GOCACHE")+":/root/.cache/go-build",
		"-t", tag, repo)...)
	p.t.Logf("built %s (version %s) in %v", tag, version, time.Since(start).Round(time.Second))
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return s
}

// buildArgs is `podman build` with args: never pulling (the base images are
// local), keeping HEALTHCHECK (docker format), and with the runtime that
// RUN steps need here (podman build does not take the global --runtime).
func (p *Podman) buildArgs(args ...string) []string {
	out := []string{"build", "--pull=never", "--format", "docker"}
	if p.runtime != "" {
		out = append(out, "--runtime", p.runtime)
	}
	return append(out, args...)
}
