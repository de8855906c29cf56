package cryptfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/testenv"
	"golang.org/x/sys/unix"
)

const (
	testKey    = "correct horse battery staple"
	testMarker = "PLAINTEXT-MARKER-7f3a9c"
	// Generous: the machine is shared and tests run under -race.
	testDeadline = 30 * time.Second
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// gocryptfsBinary finds the pinned binary: $GOCRYPTFS_BIN, <repo>/bin/gocryptfs, $PATH.
func gocryptfsBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("GOCRYPTFS_BIN"); p != "" {
		if isExecutable(p) == nil {
			return p
		}
		t.Fatalf("GOCRYPTFS_BIN=%s is not an executable", p)
	}
	if p, err := filepath.Abs("../../bin/gocryptfs"); err == nil && isExecutable(p) == nil {
		return p
	}
	return testenv.LookPath(t, "gocryptfs", "make build (builds the pinned bin/gocryptfs) or set GOCRYPTFS_BIN")
}

// testOptions returns options for a fresh volume in a temporary directory,
// after checking FUSE and the binary are present.
func testOptions(t *testing.T) Options {
	t.Helper()
	testenv.RequireFUSE(t)
	bin := gocryptfsBinary(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(testKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return Options{
		Binary:     bin,
		CipherDir:  filepath.Join(dir, "cipher"),
		MountPoint: filepath.Join(dir, "plain"),
		KeyFile:    key,
		ScryptN:    10,
		Logger:     discardLogger(),
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	t.Cleanup(cancel)
	return ctx
}

// start mounts and registers a cleanup that unmounts whatever happens.
func start(t *testing.T, o Options) *Mount {
	t.Helper()
	ensureUnmountedAtCleanup(t, o.MountPoint)
	m, err := Start(testContext(t), o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

// ensureUnmountedAtCleanup detaches any mount left at dir when the test
// ends, so a failing test leaves nothing behind.
func ensureUnmountedAtCleanup(t *testing.T, dir string) {
	t.Cleanup(func() {
		real := filepath.Join(mustEvalSymlinks(filepath.Dir(dir)), filepath.Base(dir))
		for range 5 {
			entries, err := readMountinfo()
			if err != nil {
				t.Errorf("mountinfo: %v", err)
				return
			}
			if len(mountsAt(entries, real)) == 0 {
				return
			}
			t.Errorf("mount left at %s; detaching", real)
			unix.Unmount(real, unix.MNT_DETACH)
		}
	})
}

func mustEvalSymlinks(p string) string {
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		return p
	}
	return r
}

func writeFile(t *testing.T, root *os.Root, name string, data []byte) {
	t.Helper()
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testDeadline):
		t.Fatalf("%s: not within %v", what, testDeadline)
	}
}

// poll calls cond until it is true or the deadline passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	moattest.Eventually(t, testDeadline, what, cond)
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	if len(names) != 0 {
		t.Fatalf("%s is not empty after unmount: %v (plaintext landed beneath the mount)", dir, names)
	}
}

// assertNoMarker greps every file (names and contents) under dir.
func assertNoMarker(t *testing.T, dir string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), "retained") || strings.Contains(d.Name(), testMarker) {
			t.Errorf("plaintext name on disk: %s", p)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(b, []byte(testMarker)) || bytes.Contains(b, []byte(testKey)) {
			t.Errorf("plaintext in %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d files under %s checked", n, dir)
}

func TestMountWriteRemountEncrypted(t *testing.T) {
	o := testOptions(t)
	ensureUnmountedAtCleanup(t, o.MountPoint)
	ctx := testContext(t)

	t0 := time.Now()
	m, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("Start (init): %v", err)
	}
	t.Logf("init+mount+verify: %v", time.Since(t0))
	vol := m.VolumeID()
	if len(vol) != 32 {
		t.Errorf("volume id %q", vol)
	}
	if err := m.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if m.Dead() == nil {
		t.Fatal("Dead() is nil")
	}
	payload := bytes.Repeat([]byte(testMarker+" "), 2000)
	writeFile(t, m.Root(), "retained-"+testMarker+".db", payload)
	if err := m.Root().Mkdir("sessions", 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.Root(), "sessions/retained-small", []byte(testMarker))
	t0 = time.Now()
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("unmount: %v", time.Since(t0))
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if m.Root() != nil {
		t.Error("Root() not nil after Close")
	}
	if err := m.Check(); !errors.Is(err, ErrClosed) {
		t.Errorf("Check after Close = %v, want ErrClosed", err)
	}

	assertEmptyDir(t, o.MountPoint)
	assertNoMarker(t, o.CipherDir)
	if _, err := os.Stat(filepath.Join(o.CipherDir, "gocryptfs.conf")); err != nil {
		t.Errorf("gocryptfs.conf: %v", err)
	}

	t0 = time.Now()
	m2 := start(t, o)
	t.Logf("mount+verify existing volume: %v", time.Since(t0))
	if m2.VolumeID() != vol {
		t.Errorf("volume id %s after remount, want %s", m2.VolumeID(), vol)
	}
	got, err := m2.Root().ReadFile("retained-" + testMarker + ".db")
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	if got, err := m2.Root().ReadFile("sessions/retained-small"); err != nil || string(got) != testMarker {
		t.Fatalf("read back small: %q, %v", got, err)
	}
}

func TestStartErrors(t *testing.T) {
	base := testOptions(t)
	ctx := testContext(t)
	// A valid volume to damage in copies.
	ensureUnmountedAtCleanup(t, base.MountPoint)
	m, err := Start(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(base.CipherDir, "gocryptfs.conf"))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		setup func(t *testing.T, o *Options)
		want  error
		says  string
	}{
		{
			name: "wrong key",
			setup: func(t *testing.T, o *Options) {
				os.WriteFile(o.KeyFile, []byte("not the key\n"), 0o600)
			},
			want: ErrWrongKey, says: "wrong key in persistence_key_file",
		},
		{
			name: "empty key file",
			setup: func(t *testing.T, o *Options) {
				os.WriteFile(o.KeyFile, nil, 0o600)
			},
			want: ErrEmptyKey, says: "empty",
		},
		{
			name: "truncated gocryptfs.conf",
			setup: func(t *testing.T, o *Options) {
				p := filepath.Join(o.CipherDir, "gocryptfs.conf")
				os.Chmod(p, 0o600)
				os.WriteFile(p, conf[:len(conf)/2], 0o400)
			},
			want: ErrConfig, says: "restore gocryptfs.conf from a backup",
		},
		{
			name: "garbled gocryptfs.conf",
			setup: func(t *testing.T, o *Options) {
				p := filepath.Join(o.CipherDir, "gocryptfs.conf")
				os.Chmod(p, 0o600)
				os.WriteFile(p, bytes.ReplaceAll(conf, []byte("EncryptedKey"), []byte("EncryptedKez")), 0o400)
			},
			want: ErrConfig, says: "unrecoverable",
		},
		{
			name: "missing gocryptfs.conf",
			setup: func(t *testing.T, o *Options) {
				os.Remove(filepath.Join(o.CipherDir, "gocryptfs.conf"))
			},
			want: ErrConfig, says: "has no gocryptfs.conf",
		},
		{
			name: "mount point not empty",
			setup: func(t *testing.T, o *Options) {
				os.MkdirAll(o.MountPoint, 0o700)
				os.WriteFile(filepath.Join(o.MountPoint, "stray"), []byte("x"), 0o600)
			},
			want: ErrMountPoint, says: "not empty",
		},
		{
			name: "mount point is a file",
			setup: func(t *testing.T, o *Options) {
				os.WriteFile(o.MountPoint, nil, 0o600)
			},
			want: ErrMountPoint, says: "not a directory",
		},
		{
			// A volume there (the image's VOLUME, a compose volume)
			// would keep what is written below the mount.
			name: "mount point holds a persistent filesystem",
			setup: func(t *testing.T, o *Options) {
				os.MkdirAll(o.MountPoint, 0o700)
				bindMount(t, t.TempDir(), o.MountPoint)
			},
			want: ErrMountPoint, says: "remove that mount",
		},
		{
			name: "mount point is a tmpfs holding files",
			setup: func(t *testing.T, o *Options) {
				os.MkdirAll(o.MountPoint, 0o700)
				mountTmpfs(t, o.MountPoint, "1m")
				os.WriteFile(filepath.Join(o.MountPoint, "stray"), []byte("x"), 0o600)
			},
			want: ErrMountPoint, says: "not empty",
		},
		{
			name: "cipher dir inside mount point",
			setup: func(t *testing.T, o *Options) {
				o.CipherDir = filepath.Join(o.MountPoint, "cipher")
			},
			want: ErrMountPoint, says: "must not contain each other",
		},
		{
			name: "missing binary",
			setup: func(t *testing.T, o *Options) {
				o.Binary = filepath.Join(t.TempDir(), "gocryptfs")
			},
			want: ErrNoBinary, says: "gocryptfs",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			o := base
			o.CipherDir = filepath.Join(dir, "cipher")
			o.MountPoint = filepath.Join(dir, "plain")
			o.KeyFile = filepath.Join(dir, "key")
			if err := os.CopyFS(o.CipherDir, os.DirFS(base.CipherDir)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(o.KeyFile, []byte(testKey), 0o600); err != nil {
				t.Fatal(err)
			}
			ensureUnmountedAtCleanup(t, o.MountPoint)
			tt.setup(t, &o)
			m, err := Start(ctx, o)
			if err == nil {
				m.Close()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("err = %q, want it to say %q", err, tt.says)
			}
			if strings.Contains(err.Error(), testKey) {
				t.Errorf("error leaks the key: %v", err)
			}
		})
	}
}

// mountTmpfs mounts a tmpfs of the given size on dir until the test ends.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		testenv.Missing(t, "mounting a tmpfs ("+err.Error()+")", "run as root (CAP_SYS_ADMIN)")
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// bindMount mounts src on dir until the test ends.
func bindMount(t *testing.T, src, dir string) {
	t.Helper()
	if err := unix.Mount(src, dir, "", unix.MS_BIND, ""); err != nil {
		testenv.Missing(t, "bind mounting ("+err.Error()+")", "run as root (CAP_SYS_ADMIN)")
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// A read-only container root gets its mount point as an empty tmpfs
// (fusermount3 needs a writable one): Moat mounts over it, and nothing
// written reaches the tmpfs.
func TestMountOverEmptyTmpfs(t *testing.T) {
	o := testOptions(t)
	if err := os.MkdirAll(o.MountPoint, 0o700); err != nil {
		t.Fatal(err)
	}
	ensureUnmountedAtCleanup(t, o.MountPoint)
	mountTmpfs(t, o.MountPoint, "1m")
	m, err := Start(testContext(t), o)
	if err != nil {
		t.Fatalf("Start over an empty tmpfs: %v", err)
	}
	writeFile(t, m.Root(), "retained.db", []byte("plaintext-in-tmpfs-test"))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	assertEmptyDir(t, o.MountPoint)
	if m, err = Start(testContext(t), o); err != nil {
		t.Fatalf("second Start over the tmpfs: %v", err)
	}
	defer m.Close()
	if b, err := m.Root().ReadFile("retained.db"); err != nil || string(b) != "plaintext-in-tmpfs-test" {
		t.Fatalf("after remount over the tmpfs: %q, %v", b, err)
	}
}

func TestChildKilledFailsClosedAndRemounts(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	ctx := testContext(t)
	writeFile(t, m.Root(), "retained.db", []byte(testMarker))
	oldRoot, dead := m.Root(), m.Dead()
	f, err := oldRoot.OpenFile("open-while-killed", os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	m.mu.Lock()
	proc := m.child.cmd.Process
	m.mu.Unlock()
	if err := proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, dead, "Dead() after kill -9 of gocryptfs")

	if _, err := f.Write([]byte(testMarker)); err == nil {
		if err := f.Sync(); err == nil {
			t.Error("write through a file of the dead mount succeeded")
		}
	}
	if err := oldRoot.WriteFile("after-death", []byte(testMarker), 0o600); err == nil {
		t.Error("write through the old Root succeeded after gocryptfs died")
	}
	if err := m.Check(); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Check after kill = %v, want ErrNotMounted", err)
	}

	if err := m.Remount(ctx); err != nil {
		t.Fatalf("Remount: %v", err)
	}
	if err := m.Check(); err != nil {
		t.Fatalf("Check after Remount: %v", err)
	}
	select {
	case <-m.Dead():
		t.Fatal("new Dead() already closed")
	default:
	}
	if got, err := m.Root().ReadFile("retained.db"); err != nil || string(got) != testMarker {
		t.Fatalf("after Remount: %q, %v", got, err)
	}
	if _, err := m.Root().Stat("after-death"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after-death: %v", err)
	}
	if err := oldRoot.WriteFile("after-remount", []byte(testMarker), 0o600); err == nil {
		t.Error("write through the old Root succeeded after Remount")
	}
	f.Close()
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertEmptyDir(t, o.MountPoint)
	assertNoMarker(t, o.CipherDir)
}

func TestRemountHealthyMount(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	writeFile(t, m.Root(), "a", []byte("1"))
	if err := m.Remount(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Root().ReadFile("a"); err != nil || string(got) != "1" {
		t.Fatalf("%q, %v", got, err)
	}
}

func TestStaleDeadMountCleanedAtStart(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	writeFile(t, m.Root(), "retained.db", []byte(testMarker))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	// A previous run's gocryptfs, killed without unmounting.
	cmd := exec.Command(o.Binary, "-fg", "-nosyslog", "-q", "--", o.CipherDir, o.MountPoint)
	cmd.Stdin = strings.NewReader(testKey + "\n")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(mustEvalSymlinks(filepath.Dir(o.MountPoint)), filepath.Base(o.MountPoint))
	// Wait until it serves files: killed while still mounting, gocryptfs
	// can hang (TestHungMountAbortedAtStart covers recovery).
	poll(t, "manual gocryptfs mount", func() bool {
		entries, _ := readMountinfo()
		if _, ok := topMount(entries, mnt); !ok {
			return false
		}
		_, err := os.Stat(filepath.Join(mnt, sentinelName))
		return err == nil
	})
	cmd.Process.Kill()
	cmd.Wait()
	var st unix.Stat_t
	if err := unix.Stat(mnt, &st); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("stat of the dead mount: %v, want ENOTCONN", err)
	}

	m2 := start(t, o)
	if err := m2.Check(); err != nil {
		t.Fatal(err)
	}
	if got, err := m2.Root().ReadFile("retained.db"); err != nil || string(got) != testMarker {
		t.Fatalf("%q, %v", got, err)
	}
	entries, _ := readMountinfo()
	if n := len(mountsAt(entries, mnt)); n != 1 {
		t.Errorf("%d mounts stacked at %s, want 1", n, mnt)
	}
}

func TestLiveForeignMountRefused(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	o2 := o
	o2.CipherDir = filepath.Join(t.TempDir(), "other")
	if _, err := Start(testContext(t), o2); !errors.Is(err, ErrMountPoint) || !strings.Contains(err.Error(), "another gocryptfs") {
		t.Errorf("second Start on a live mount point: %v", err)
	}
	if err := m.Check(); err != nil {
		t.Errorf("first mount disturbed: %v", err)
	}
}

// A Moat restarted right after a kill -9 finds its old gocryptfs still
// unmounting itself; Start waits for it instead of refusing.
func TestStartWaitsForAnUnmountingMount(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	go func() {
		time.Sleep(time.Second)
		_ = m.Close()
	}()
	m2, err := Start(testContext(t), o)
	if err != nil {
		t.Fatalf("Start while the old mount goes away: %v", err)
	}
	defer m2.Close()
	if err := m2.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseRetriesWhileBusy(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	f, err := m.Root().Create("busy")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Close() }()
	// Release the file once Close has seen the mount busy at least once.
	poll(t, "Close to start", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.closed
	})
	time.Sleep(100 * time.Millisecond)
	f.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("Close did not return")
	}
	assertEmptyDir(t, o.MountPoint)
}

func TestDiskFull(t *testing.T) {
	o := testOptions(t)
	if err := os.MkdirAll(o.CipherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, o.CipherDir, "4m")
	m := start(t, o)
	writeFile(t, m.Root(), "keep", []byte(testMarker))

	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i % 251)
	}
	f, err := m.Root().Create("big")
	if err != nil {
		t.Fatal(err)
	}
	written := 0
	var werr error
	for i := 0; i < 200 && werr == nil; i++ { // 12.5 MiB > 4 MiB
		var n int
		n, werr = f.Write(chunk)
		written += n
	}
	if werr == nil {
		werr = f.Sync()
	}
	f.Close()
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("writing past a full disk: %v, want ENOSPC", werr)
	}
	t.Logf("ENOSPC after %d bytes", written)
	if err := m.Check(); err != nil {
		t.Fatalf("Check on a full disk: %v", err)
	}
	got, err := m.Root().ReadFile("big")
	if err != nil {
		t.Fatalf("read back the partial file: %v", err)
	}
	for i := range got {
		if got[i] != byte((i%len(chunk))%251) {
			t.Fatalf("byte %d of %d corrupted", i, len(got))
		}
	}
	if err := m.Root().Remove("big"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, m.Root(), "after", []byte("space again"))
	if err := m.Remount(testContext(t)); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"keep": testMarker, "after": "space again"} {
		if got, err := m.Root().ReadFile(name); err != nil || string(got) != want {
			t.Errorf("%s after remount: %q, %v", name, got, err)
		}
	}
}

// TestSupervisorDeath kills a process that holds a mount; Pdeathsig must
// make gocryptfs unmount by itself.
func TestSupervisorDeath(t *testing.T) {
	o := testOptions(t)
	ensureUnmountedAtCleanup(t, o.MountPoint)
	ctx := testContext(t)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSupervisorDeathHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"MOAT_CRYPTFS_HELPER=1",
		"MOAT_CRYPTFS_BIN="+o.Binary,
		"MOAT_CRYPTFS_CIPHER="+o.CipherDir,
		"MOAT_CRYPTFS_MNT="+o.MountPoint,
		"MOAT_CRYPTFS_KEY="+o.KeyFile,
	)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	pidc := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "cryptfs-helper ready "); ok {
				pid, _ := strconv.Atoi(s)
				pidc <- pid
				return
			}
		}
		close(pidc)
	}()
	var pid int
	select {
	case pid = <-pidc:
	case <-time.After(testDeadline):
		t.Fatal("helper did not mount")
	}
	if pid <= 0 {
		t.Fatal("helper exited without mounting")
	}
	t.Cleanup(func() {
		if processAlive(pid) {
			t.Errorf("gocryptfs %d still running; killing it", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	mnt := filepath.Join(mustEvalSymlinks(filepath.Dir(o.MountPoint)), filepath.Base(o.MountPoint))
	entries, _ := readMountinfo()
	if e, ok := topMount(entries, mnt); !ok || e.FSType != fstypeGocryptfs {
		t.Fatalf("helper's mount not visible: %+v", e)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	t0 := time.Now()
	poll(t, "mount to disappear after the supervisor died", func() bool {
		entries, _ := readMountinfo()
		_, ok := topMount(entries, mnt)
		return !ok
	})
	t.Logf("mount gone %v after the supervisor was killed", time.Since(t0))
	poll(t, "gocryptfs to exit", func() bool { return !processAlive(pid) })
	assertEmptyDir(t, o.MountPoint)
}

// processAlive reports whether pid runs (a zombie counts as exited).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// TestSupervisorDeathHelper is the supervisor that TestSupervisorDeath kills.
func TestSupervisorDeathHelper(t *testing.T) {
	if os.Getenv("MOAT_CRYPTFS_HELPER") != "1" {
		t.Skip("helper process for TestSupervisorDeath")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	m, err := Start(ctx, Options{
		Binary:     os.Getenv("MOAT_CRYPTFS_BIN"),
		CipherDir:  os.Getenv("MOAT_CRYPTFS_CIPHER"),
		MountPoint: os.Getenv("MOAT_CRYPTFS_MNT"),
		KeyFile:    os.Getenv("MOAT_CRYPTFS_KEY"),
		ScryptN:    10,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close() // only reached if the parent fails to kill us
	m.mu.Lock()
	pid := m.child.cmd.Process.Pid
	m.mu.Unlock()
	fmt.Printf("cryptfs-helper ready %d\n", pid)
	<-ctx.Done()
}

// TestPosix runs go-fuse's POSIX conformance checks against the mount.
func TestPosix(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	skip := map[string]string{
		// Expects per-fd POSIX record locks; fails on plain ext4 too.
		"FcntlFlockLocksFile": "expects per-fd locks; fails on ext4 as well",
	}
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := skip[name]; ok {
				t.Skip(why)
			}
			// Each check wants an empty directory of its own.
			if err := m.Root().Mkdir(name, 0o755); err != nil {
				t.Fatal(err)
			}
			posixtest.All[name](t, filepath.Join(m.MountPoint(), name))
		})
	}
	if err := m.Check(); err != nil {
		t.Fatalf("Check after posixtest: %v", err)
	}
}

func TestStartCancelledWhileMounting(t *testing.T) {
	o := testOptions(t)
	o.ScryptN = 17 // slow enough (~1 s of scrypt) to cancel during key derivation
	m := start(t, o)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	m2, err := Start(ctx, o)
	if err == nil {
		// The machine derived the key within 20 ms; nothing to check.
		m2.Close()
		t.Skip("mount finished before the deadline")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	mnt := filepath.Join(mustEvalSymlinks(filepath.Dir(o.MountPoint)), filepath.Base(o.MountPoint))
	entries, _ := readMountinfo()
	if _, ok := topMount(entries, mnt); ok {
		t.Error("a mount was left behind")
	}
	assertEmptyDir(t, o.MountPoint)
}

func TestConcurrentCheckAndRemount(t *testing.T) {
	o := testOptions(t)
	m := start(t, o)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.Check() // may fail mid-remount; must not race
			if r := m.Root(); r != nil {
				r.ReadFile(sentinelName)
			}
			m.Dead()
		}
	}()
	for range 3 {
		if err := m.Remount(testContext(t)); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	<-done
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestHungMountAbortedAtStart leaves a mount whose gocryptfs no longer
// answers (stopped here; killed mid-mount it hangs the same way): Start
// must abort the FUSE connection instead of blocking on it.
func TestHungMountAbortedAtStart(t *testing.T) {
	o := testOptions(t)
	if entries, err := readMountinfo(); err == nil && len(mountsAt(entries, fusectlDir)) == 0 {
		// abortFUSE mounts fusectl on demand; leave the system as found.
		t.Cleanup(func() { unix.Unmount(fusectlDir, 0) })
	}
	m := start(t, o)
	writeFile(t, m.Root(), "retained.db", []byte(testMarker))
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(o.Binary, "-fg", "-nosyslog", "-q", "--", o.CipherDir, o.MountPoint)
	cmd.Stdin = strings.NewReader(testKey + "\n")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
		cmd.Wait()
	})
	mnt := filepath.Join(mustEvalSymlinks(filepath.Dir(o.MountPoint)), filepath.Base(o.MountPoint))
	poll(t, "manual gocryptfs mount", func() bool {
		entries, _ := readMountinfo()
		if _, ok := topMount(entries, mnt); !ok {
			return false
		}
		_, err := os.Stat(filepath.Join(mnt, sentinelName))
		return err == nil
	})
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	m2 := start(t, o)
	if got, err := m2.Root().ReadFile("retained.db"); err != nil || string(got) != testMarker {
		t.Fatalf("%q, %v", got, err)
	}
}
