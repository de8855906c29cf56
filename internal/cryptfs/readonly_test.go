package cryptfs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// foreignVolume makes a gocryptfs directory the way other set-ups do
// (gocryptfs -init, then a plain gocryptfs mount), holding one file.
func foreignVolume(t *testing.T, o Options, name string, content []byte) {
	t.Helper()
	fusermount := testenv.LookPath(t, "fusermount3", "apt-get install fuse3")
	if err := os.MkdirAll(o.CipherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(o.MountPoint, 0o700); err != nil {
		t.Fatal(err)
	}
	pw := testKey + "\n"
	init := exec.Command(o.Binary, "-init", "-q", "-scryptn", "10", o.CipherDir)
	init.Stdin = bytes.NewBufferString(pw)
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("gocryptfs -init: %v: %s", err, out)
	}
	ensureUnmountedAtCleanup(t, o.MountPoint)
	mount := exec.Command(o.Binary, "-q", o.CipherDir, o.MountPoint)
	mount.Stdin = bytes.NewBufferString(pw)
	if out, err := mount.CombinedOutput(); err != nil {
		t.Fatalf("gocryptfs mount: %v: %s", err, out)
	}
	werr := os.WriteFile(filepath.Join(o.MountPoint, name), content, 0o600)
	if out, err := exec.Command(fusermount, "-u", o.MountPoint).CombinedOutput(); err != nil {
		t.Fatalf("fusermount -u: %v: %s", err, out)
	}
	if werr != nil {
		t.Fatal(werr)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// A read-only mount opens another set-up's volume, reads it and changes
// nothing in it: no volume id is written, writes fail.
func TestReadOnlyForeignVolume(t *testing.T) {
	o := testOptions(t)
	foreignVolume(t, o, "mosquitto.db", []byte("old data"))
	before := dirNames(t, o.CipherDir)
	o.ReadOnly = true
	m := start(t, o)
	got, err := m.Root().ReadFile("mosquitto.db")
	if err != nil || string(got) != "old data" {
		t.Fatalf("read through the read-only mount: %q %v", got, err)
	}
	if err := m.Root().WriteFile("new", []byte("x"), 0o600); err == nil {
		t.Fatal("write on a read-only mount succeeded")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if after := dirNames(t, o.CipherDir); len(after) != len(before) {
		t.Fatalf("encrypted directory changed: %v -> %v", before, after)
	}
}

func TestReadOnlyRefusesEmptyAndWrongKey(t *testing.T) {
	o := testOptions(t)
	o.ReadOnly = true
	ensureUnmountedAtCleanup(t, o.MountPoint)
	if _, err := Start(testContext(t), o); !errors.Is(err, ErrCipherDir) {
		t.Fatalf("read-only on an empty directory: %v, want ErrCipherDir", err)
	}
	if names := dirNames(t, o.CipherDir); len(names) != 0 {
		t.Fatalf("read-only start initialised a volume: %v", names)
	}
	o.ReadOnly = false
	foreignVolume(t, o, "f", []byte("x"))
	o.ReadOnly = true
	if err := os.WriteFile(o.KeyFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(testContext(t), o); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
}

// A mount point another gocryptfs serves is told apart (ErrServed) from
// other unusable mount points, so tools can say "stop the broker first".
func TestServedMountPoint(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	o.ReadOnly = true
	_, err := Start(testContext(t), o)
	if !errors.Is(err, ErrServed) || !errors.Is(err, ErrMountPoint) {
		t.Fatalf("second Start on a served mount point: %v", err)
	}
	if err := m.Check(); err != nil {
		t.Errorf("first mount disturbed: %v", err)
	}
	full := testOptions(t)
	if err := os.MkdirAll(full.MountPoint, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full.MountPoint, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(testContext(t), full); errors.Is(err, ErrServed) || !errors.Is(err, ErrMountPoint) {
		t.Fatalf("non-empty mount point: %v", err)
	}
}
