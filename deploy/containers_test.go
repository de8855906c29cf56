package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moat-mqtt/moat/internal/containertest"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// moatUID is the uid the image runs Moat as.
const moatUID = 1883

// TestContainers builds the image from the Dockerfile with podman and runs
// the compose stacks from their compose files, with only the overrides a
// user would pass too (environment, copies of config files, a device node,
// ports published on 127.0.0.1).
func TestContainers(t *testing.T) {
	if testing.Short() {
		t.Skip("containers: not in -short")
	}
	p := containertest.New(t)
	version := imageVersion(t)
	tag := "localhost/moat-test:" + p.RunID
	start := time.Now()
	p.Build("..", tag, version)
	t.Cleanup(func() { p.Try(time.Minute, "image", "rm", "-f", tag) })
	t.Logf("image ready after %v", time.Since(start).Round(time.Second))

	t.Run("version", func(t *testing.T) {
		out := p.For(t).Must(time.Minute, "run", "--rm", tag, "version")
		if !strings.Contains(out, version) || strings.Contains(out, "dev") {
			t.Errorf("moat version in the image: %q, want %q", out, version)
		}
	})
	t.Run("direct", func(t *testing.T) { testDirect(t, p.For(t), tag) })
	t.Run("direct FUSE diagnostics", func(t *testing.T) { testDirectFUSEDiagnostics(t, p.For(t), tag) })
	t.Run("tunnel", func(t *testing.T) { testTunnel(t, p.For(t), tag) })
	t.Run("homeassistant", func(t *testing.T) { testHomeAssistant(t, p.For(t), tag) })
}

// imageVersion is the version the image is built with: MOAT_VERSION (the
// Makefile passes its VERSION), else git describe as the Makefile does.
func imageVersion(t *testing.T) string {
	if v := os.Getenv("MOAT_VERSION"); v != "" {
		return v
	}
	out, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "0.0.0-test"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ownedFile writes a file readable by Moat's uid only, as the compose
// files' comments tell users to.
func ownedFile(t *testing.T, path string, data []byte, mode fs.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, moatUID, moatUID); err != nil {
		t.Fatal(err)
	}
	return path
}

// confCopy is a copy of a shipped moat.conf with extra lines appended.
func confCopy(t *testing.T, src, dir string, extra ...string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, []byte("\n# test overrides\n"+strings.Join(extra, "\n")+"\n")...)
	return ownedFile(t, filepath.Join(dir, filepath.Base(src)), b, 0o644)
}

// passwdFile writes a password file holding user:password.
func passwdFile(t *testing.T, dir, user, password string) string {
	t.Helper()
	h, err := passwd.Hash([]byte(password), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	return ownedFile(t, filepath.Join(dir, "passwd"), []byte(user+":"+h+"\n"), 0o600)
}

// fuseNode is the device node to pass as /dev/fuse. The container's node
// keeps the host node's mode, and uid 1883 needs it 0666 (the kernel's
// default); where the host's /dev/fuse is stricter, a 0666 node of the
// same device in a test directory is used instead of changing the host.
func fuseNode(t *testing.T) string {
	t.Helper()
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatalf("/dev/fuse: %v", err)
	}
	if st.Mode().Perm()&0o666 == 0o666 {
		return "/dev/fuse"
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "fuse")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil {
		t.Fatalf("mknod %s: %v", node, err)
	}
	if err := os.Chmod(node, 0o666); err != nil {
		t.Fatal(err)
	}
	return node
}

// waitFor polls cond until it returns "" or d passes; the last reason is
// the failure message.
func waitFor(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	reason := ""
	for {
		if reason = cond(); reason == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, d, reason)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// grepTree reports the files under dir containing any of needles.
func grepTree(t *testing.T, dir string, needles ...string) []string {
	t.Helper()
	var hits []string
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, []byte(n)) {
				hits = append(hits, fmt.Sprintf("%s contains %q", path, n))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("%s holds no files", dir)
	}
	return hits
}

func itoa(n int) string { return fmt.Sprint(n) }

// lastLines is the end of a log, for failure messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runCmd runs a host command with a deadline.
func runCmd(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// errorLines are the last n log lines at level ERROR (Moat's JSON log) or
// printed by a failed start.
func errorLines(logs string, n int) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"level":"ERROR"`) || strings.HasPrefix(l, "moat:") || strings.Contains(l, "rror") {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileMode(m uint32) fs.FileMode { return fs.FileMode(m) }
