// Package testenv decides what a test does when a tool it needs is missing:
// under CI=true it fails, so CI proves every part; elsewhere it skips with a
// message that says what to install.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing fails the test under CI and skips it elsewhere, naming what to install.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is required under CI=true: %s", what, install)
	}
	t.Skipf("%s not available; to run this test: %s", what, install)
}

// LookPath returns the path of a command, or fails/skips the test as Missing does.
func LookPath(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, install)
	}
	return p
}

// RequireFUSE fails/skips unless /dev/fuse can be opened and fusermount3 exists.
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		Missing(t, "FUSE (/dev/fuse)", "run as root with /dev/fuse present (docker: --device /dev/fuse --cap-add SYS_ADMIN)")
		return
	}
	f.Close()
	LookPath(t, "fusermount3", "apt-get install fuse3")
}
