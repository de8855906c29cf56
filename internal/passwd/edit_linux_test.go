package passwd

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/testenv"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func owner(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

// TestEditInPlace: every edit keeps the file's inode (so a hard link sees
// it), owner and mode.
func TestEditInPlace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pw")
	link := filepath.Join(dir, "hardlink")
	os.WriteFile(path, []byte("a:"+testHash(t, "x")+"\nb:"+testHash(t, "y")+"\nc:plain\n"), 0o640)
	os.Chmod(path, 0o640)
	if err := os.Link(path, link); err != nil {
		t.Fatal(err)
	}
	wantUID, wantGID := owner(t, path)
	if os.Geteuid() == 0 {
		if err := os.Chown(path, 1883, 1883); err != nil {
			t.Fatal(err)
		}
		wantUID, wantGID = 1883, 1883
	}
	ino := inode(t, path)
	steps := []struct {
		name string
		do   func() error
	}{
		{"convert", func() error { _, err := ConvertPlaintext(path, "", 10); return err }},
		{"set", func() error { return SetPassword(path, "d", []byte("z"), "", 10, false) }},
		{"delete", func() error { return DeleteUser(path, "a") }},
		{"create", func() error { return SetPassword(path, "e", []byte("w"), "", 10, true) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if inode(t, path) != ino {
			t.Fatalf("%s replaced the file (new inode)", s.name)
		}
		if m := fileMode(t, path); m != 0o640 {
			t.Fatalf("%s: mode %04o, want 0640", s.name, m)
		}
		if uid, gid := owner(t, path); uid != wantUID || gid != wantGID {
			t.Fatalf("%s: owner %d:%d, want %d:%d", s.name, uid, gid, wantUID, wantGID)
		}
		if _, err := os.Stat(PendingCopy(path)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s left its pending copy: %v", s.name, err)
		}
	}
	mustVerify(t, link, "e", "w", true)
	noTempFiles(t, dir)
}

// TestEditBindMount edits a file that is a bind mount, as a container sees
// a host file (and the host copy is seen through it): rename(2) cannot
// replace it, the edit goes through in place, owner and mode stay. On a
// read-only bind mount the edit is refused with the reason, nothing changed.
func TestEditBindMount(t *testing.T) {
	host := t.TempDir()
	ctr := t.TempDir()
	src := filepath.Join(host, "passwd")
	dst := filepath.Join(ctr, "passwd")
	orig := "a:" + testHash(t, "x") + "\nb:" + testHash(t, "y") + "\n"
	for _, p := range []string{src, dst} {
		if err := os.WriteFile(p, []byte(orig), 0o640); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o640)
	}
	if err := os.Chown(src, 1883, 1883); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	testenv.BindMount(t, src, dst, false)
	tmp := filepath.Join(ctr, "new")
	os.WriteFile(tmp, []byte(orig), 0o600)
	if err := os.Rename(tmp, dst); !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename over the bind mount: %v, want EBUSY or EXDEV", err)
	}
	os.Remove(tmp)

	if err := SetPassword(dst, "c", []byte("z"), "", 10, false); err != nil {
		t.Fatalf("set on a bind-mounted file: %v", err)
	}
	if err := DeleteUser(dst, "a"); err != nil {
		t.Fatalf("delete on a bind-mounted file: %v", err)
	}
	for _, p := range []string{src, dst} {
		mustVerify(t, p, "c", "z", true)
		mustVerify(t, p, "b", "y", true)
		mustVerify(t, p, "a", "x", false)
	}
	if m := fileMode(t, src); m != 0o640 {
		t.Errorf("mode %04o, want 0640", m)
	}
	if uid, gid := owner(t, src); uid != 1883 || gid != 1883 {
		t.Errorf("owner %d:%d, want 1883:1883", uid, gid)
	}
	noTempFiles(t, ctr)

	// Read-only: refused, with the reason, before anything is written.
	roDir := t.TempDir()
	ro := filepath.Join(roDir, "passwd")
	os.WriteFile(ro, nil, 0o600)
	testenv.BindMount(t, src, ro, true)
	before, _ := os.ReadFile(src)
	err := SetPassword(ro, "d", []byte("w"), "", 10, false)
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("set on a read-only bind mount: %v, want a read-only refusal", err)
	}
	if err := DeleteUser(ro, "b"); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("delete on a read-only bind mount: %v", err)
	}
	if after, _ := os.ReadFile(src); !bytes.Equal(before, after) {
		t.Fatal("refused edit changed the file")
	}
	if ents, _ := os.ReadDir(roDir); len(ents) != 1 {
		t.Fatalf("refused edit left files: %v", ents)
	}

	// A writable file in a read-only directory (a container's read_only
	// root): the safety copy cannot be written, so nothing is.
	lockedDir := t.TempDir()
	inLocked := filepath.Join(lockedDir, "passwd")
	os.WriteFile(inLocked, nil, 0o600)
	testenv.BindMount(t, lockedDir, lockedDir, true)
	testenv.BindMount(t, src, inLocked, false)
	err = SetPassword(inLocked, "d", []byte("w"), "", 10, false)
	if err == nil || !strings.Contains(err.Error(), "safety copy") || !strings.Contains(err.Error(), "not changed") {
		t.Fatalf("set in a read-only directory: %v, want a refusal naming the safety copy", err)
	}
	if after, _ := os.ReadFile(src); !bytes.Equal(before, after) {
		t.Fatal("refused edit changed the file")
	}
}

// TestLoadWaitsForEdit: a reader (SIGHUP, the watcher, check-config)
// never loads a file that moat passwd is rewriting in place: Load takes a
// shared lock, waits for the edit, and gives up with ErrBeingEdited, the
// file unread, if the edit holds it too long.
func TestLoadWaitsForEdit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(path, []byte("a:"+testHash(t, "x")+"\nb:"+testHash(t, "y")+"\n"), 0o600)
	var during error
	err := rewrite(path, false, func(step string) bool {
		if step == "half written" {
			_, during = Load(path)
		}
		return false
	}, func(lines []string) ([]string, error) { return lines[1:], nil })
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(during, ErrBeingEdited) {
		t.Fatalf("Load during the rewrite: %v, want ErrBeingEdited", during)
	}
	mustVerify(t, path, "a", "x", false)
	mustVerify(t, path, "b", "y", true)

	// A lock held by someone else, released meanwhile: Load waits for it.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := Load(path); done <- err }()
	time.Sleep(editLockWait / 4) // Load is waiting; not a correctness wait
	f.Close()
	if err := <-done; err != nil {
		t.Fatalf("Load after the lock was released: %v", err)
	}
}
