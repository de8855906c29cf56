package testenv

import (
	"os"
	"syscall"
	"testing"
)

// BindMount mounts the file or directory src on dst, as `mount --bind`
// does (read-only with readOnly), and unmounts it when the test ends. It
// needs root; its absence fails the test under CI and skips it elsewhere.
func BindMount(t testing.TB, src, dst string, readOnly bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root (for mount --bind)", "run the tests as root, e.g. in the CI container")
	}
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		Missing(t, "mount --bind ("+err.Error()+")", "run the tests as root with CAP_SYS_ADMIN")
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dst, 0); err != nil {
			t.Errorf("umount %s: %v", dst, err)
		}
	})
	if readOnly {
		if err := syscall.Mount("", dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount %s read-only: %v", dst, err)
		}
	}
}
