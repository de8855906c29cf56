// Package cryptfs supervises the gocryptfs process that holds Moat's
// encrypted persistence directory: it initialises the volume, mounts it as a
// child process, proves the mount is the real encrypted one before any byte
// is written, watches it, and unmounts it cleanly.
//
// All store I/O must go through Mount.Root: it is opened on the verified
// FUSE mount, so if the mount vanishes, reads and writes fail instead of
// landing as plaintext in the directory beneath.
package cryptfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure Start.
type Options struct {
	Binary     string // gocryptfs path; "" = Find("")
	CipherDir  string // encrypted directory (created 0700 if missing)
	MountPoint string // plaintext mount point (created 0700 if missing)
	KeyFile    string // file holding the password (e.g. a Docker secret); first line; never logged
	ScryptN    int    // log2 of scrypt's N for a new volume; 0 = gocryptfs default (16); tests use 10
	// ReadOnly mounts an existing volume (any gocryptfs directory, not only
	// Moat's) with gocryptfs -ro: nothing is initialised or written.
	ReadOnly bool
	Logger   *slog.Logger
}

const (
	fstypeGocryptfs = "fuse.gocryptfs"
	sentinelName    = ".moat-volume"
	sentinelPrefix  = "moat-volume 1 "
	maxKeyLen       = 2048 // gocryptfs's own limit (readpassword.maxPasswordLen)

	readyTimeout   = 2 * time.Minute // scrypt at default cost takes ~0.4 s; slow boards more
	pollInterval   = 20 * time.Millisecond
	unmountTimeout = 15 * time.Second // retry window while the mount is busy
	exitTimeout    = 10 * time.Second // wait for gocryptfs to exit after unmount or a signal
	// gocryptfs installs its SIGTERM handler only after it sends SIGUSR1;
	// a SIGTERM in between kills it and leaves a dead mount.
	sigtermGrace = 500 * time.Millisecond
)

// Find locates the gocryptfs executable: the configured path if set (which
// must then exist), else "gocryptfs" next to the running executable, else $PATH.
func Find(configured string) (string, error) {
	if configured != "" {
		if err := isExecutable(configured); err != nil {
			return "", fmt.Errorf("%w: configured path %s: %w", ErrNoBinary, configured, err)
		}
		return filepath.Abs(configured)
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "gocryptfs")
		if isExecutable(p) == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("gocryptfs"); err == nil {
		return filepath.Abs(p)
	}
	tried = append(tried, "$PATH")
	return "", fmt.Errorf("%w: tried %s; install gocryptfs v2.6.1 (make build puts it in bin/) or configure its path",
		ErrNoBinary, strings.Join(tried, ", "))
}

func isExecutable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// Mount is a running, verified gocryptfs mount.
type Mount struct {
	bin, cipherDir, mountPoint string
	log                        *slog.Logger
	key                        []byte // password; kept for Remount, zeroed by Close
	fusermount                 string // "" = unmount(2) directly
	readOnly                   bool

	op sync.Mutex // serialises Remount and Close

	mu     sync.Mutex
	root   *os.Root
	child  *child
	volID  string
	closed bool
}

// child is one gocryptfs process.
type child struct {
	cmd      *exec.Cmd
	stderr   *stderrLog
	exited   chan struct{} // closed once Wait returned; then state is set
	dead     chan struct{} // closed if it exited while not being stopped
	state    *os.ProcessState
	stopping atomic.Bool
	readyAt  time.Time
}

func (c *child) hasExited() bool {
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

func (c *child) exitCode() int {
	if c.state == nil {
		return -1
	}
	return c.state.ExitCode()
}

// Start initialises the volume if CipherDir is empty, cleans a dead mount left
// by a crash, mounts, and returns once the mount is verified.
func Start(ctx context.Context, o Options) (*Mount, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.CipherDir == "" || o.MountPoint == "" || o.KeyFile == "" {
		return nil, errors.New("cryptfs: CipherDir, MountPoint and KeyFile are required")
	}
	if o.ScryptN != 0 && (o.ScryptN < 10 || o.ScryptN > 28) {
		return nil, fmt.Errorf("cryptfs: ScryptN %d out of range 10..28", o.ScryptN)
	}
	bin, err := Find(o.Binary)
	if err != nil {
		return nil, err
	}
	key, err := readKey(o.KeyFile, log)
	if err != nil {
		return nil, err
	}
	m := &Mount{bin: bin, log: log, key: key, readOnly: o.ReadOnly}
	fail := func(err error) (*Mount, error) {
		clear(m.key)
		return nil, err
	}
	if m.cipherDir, err = prepareCipherDir(o.CipherDir); err != nil {
		return fail(err)
	}
	if m.mountPoint, err = resolveMountPoint(o.MountPoint); err != nil {
		return fail(err)
	}
	if m.mountPoint == m.cipherDir || strings.HasPrefix(m.cipherDir, m.mountPoint+"/") ||
		strings.HasPrefix(m.mountPoint, m.cipherDir+"/") {
		return fail(fmt.Errorf("%w: %s and encrypted directory %s must not contain each other", ErrMountPoint, m.mountPoint, m.cipherDir))
	}
	m.fusermount = fusermountPath()
	// Name what keeps FUSE from working before anything is created.
	if d := diagnose(gatherFUSEFacts(m.mountPoint, m.fusermount), false); d != nil {
		return fail(d)
	}

	fresh, err := isEmptyDir(m.cipherDir)
	if err != nil {
		return fail(fmt.Errorf("%w: %w", ErrCipherDir, err))
	}
	if fresh && m.readOnly {
		return fail(fmt.Errorf("%w: %s is empty, not a gocryptfs directory", ErrCipherDir, m.cipherDir))
	}
	if fresh {
		if err := m.initVolume(ctx, o.ScryptN); err != nil {
			return fail(err)
		}
	} else if err := readConf(filepath.Join(m.cipherDir, "gocryptfs.conf")); errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("%w (%s is not empty but has no gocryptfs.conf)", ErrConfig, m.cipherDir))
	} else if err != nil {
		return fail(fmt.Errorf("%w (%s/gocryptfs.conf: %w)", ErrConfig, m.cipherDir, err))
	}
	if err := m.mount(ctx, fresh); err != nil {
		return fail(err)
	}
	log.Info("encrypted directory mounted", "cipherdir", m.cipherDir, "mountpoint", m.mountPoint, "volume", m.volID)
	return m, nil
}

// readKey returns the first line of the key file.
func readKey(path string, log *slog.Logger) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("persistence_key_file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("persistence_key_file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("persistence_key_file %s: not a regular file", path)
	}
	// Group-readable is how a secret owned by root reaches Moat's uid
	// (chgrp 1883, chmod 640): only readable by everyone is a warning, and
	// the advice must not lock Moat out of a file it does not own.
	if st.Mode().Perm()&0o004 != 0 {
		log.Warn("persistence_key_file is readable by every user on this host; make it readable by Moat's user only: "+
			"chmod 600 if Moat's uid owns it, else chgrp to Moat's group and chmod 640 (uid and gid 1883 in the Moat image)",
			"file", path, "mode", st.Mode().Perm().String())
	}
	buf := make([]byte, maxKeyLen+2)
	n, err := f.Read(buf)
	if err != nil && n == 0 && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("persistence_key_file: %w", err)
	}
	line := buf[:n]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > maxKeyLen {
		clear(buf)
		return nil, fmt.Errorf("persistence_key_file %s: first line longer than %d bytes", path, maxKeyLen)
	}
	if len(line) == 0 {
		clear(buf)
		return nil, fmt.Errorf("%w: %s", ErrEmptyKey, path)
	}
	key := bytes.Clone(line)
	clear(buf)
	return key, nil
}

func prepareCipherDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCipherDir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("%w: %w", ErrCipherDir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCipherDir, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrCipherDir, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%w: %s is not a directory", ErrCipherDir, real)
	}
	return real, nil
}

// resolveMountPoint returns the mount point's real path as mountinfo shows
// it. Only the parent is resolved: the mount point itself may be a dead
// FUSE mount, on which stat fails with ENOTCONN.
func resolveMountPoint(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMountPoint, err)
	}
	parent := filepath.Dir(abs)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("%w: %w", ErrMountPoint, err)
	}
	realParent, err := filepath.EvalSymlinks(parent)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMountPoint, err)
	}
	mnt := filepath.Join(realParent, filepath.Base(abs))
	st, err := lstatTimeout(mnt, hungTimeout)
	switch {
	case errors.Is(err, unix.ENOENT):
		if err := os.Mkdir(mnt, 0o700); err != nil {
			return "", fmt.Errorf("%w: %w", ErrMountPoint, err)
		}
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return "", fmt.Errorf("%w: %s is a symlink", ErrMountPoint, mnt)
	case err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return "", fmt.Errorf("%w: %s is not a directory", ErrMountPoint, mnt)
	}
	// Any other error (ENOTCONN: a dead mount; errHung) is handled by cleanStale.
	return mnt, nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return false, nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return true, nil
}

// childEnv is the whole environment gocryptfs gets: it needs PATH to find
// fusermount, and nothing of ours should leak into it.
func childEnv() []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return []string{"PATH=" + path}
}

func (m *Mount) initVolume(ctx context.Context, scryptN int) error {
	args := []string{"-init", "-q"}
	if scryptN != 0 {
		args = append(args, "-scryptn", strconv.Itoa(scryptN))
	}
	args = append(args, "--", m.cipherDir)
	cmd := exec.CommandContext(ctx, m.bin, args...)
	cmd.Env = childEnv()
	stdin := make([]byte, 0, len(m.key)+1)
	stdin = append(append(stdin, m.key...), '\n')
	defer clear(stdin)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return newExitError("init", ee.ExitCode(), stderr.String())
		}
		return fmt.Errorf("gocryptfs init %s: %w", m.cipherDir, err)
	}
	m.log.Info("initialised new encrypted directory", "cipherdir", m.cipherDir)
	return nil
}

// mount starts gocryptfs and waits until the mount is verified. fresh means
// the volume was just initialised and gets its sentinel now.
func (m *Mount) mount(ctx context.Context, fresh bool) error {
	if err := m.cleanStale(); err != nil {
		return err
	}
	empty, err := isEmptyDir(m.mountPoint)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMountPoint, err)
	}
	if !empty {
		return fmt.Errorf("%w: %s is not empty; refusing to hide or mix plaintext files under the encrypted mount", ErrMountPoint, m.mountPoint)
	}

	// Registered before the child starts: gocryptfs signals readiness with
	// SIGUSR1 to our pid. Other mounts in this process signal it too, so it
	// is only a hint; mountinfo and the sentinel decide.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	defer signal.Stop(sig)

	c, err := m.spawn()
	if err != nil {
		return err
	}
	root, err := m.awaitReady(ctx, c, sig, fresh)
	if err != nil {
		m.stop(c)
		if errors.Is(err, ErrNoFUSE) {
			// gocryptfs only says the mount failed; say why.
			if d := diagnose(gatherFUSEFacts(m.mountPoint, m.fusermount), true); d != nil {
				d.Err = err
				return d
			}
		}
		return err
	}
	m.mu.Lock()
	m.child, m.root = c, root
	m.mu.Unlock()
	go m.watch(c)
	return nil
}

// spawn starts gocryptfs in the foreground as our child.
func (m *Mount) spawn() (*child, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("gocryptfs mount: stdin pipe: %w", err)
	}
	// The password goes through a pipe (never argv or the environment).
	// It is smaller than the pipe buffer, so this does not block.
	stdin := make([]byte, 0, len(m.key)+1)
	stdin = append(append(stdin, m.key...), '\n')
	_, werr := pw.Write(stdin)
	clear(stdin)
	pw.Close()
	if werr != nil {
		pr.Close()
		return nil, fmt.Errorf("gocryptfs mount: writing stdin: %w", werr)
	}

	c := &child{
		stderr: &stderrLog{log: m.log},
		exited: make(chan struct{}),
		dead:   make(chan struct{}),
	}
	args := []string{"-fg", "-notifypid=" + strconv.Itoa(os.Getpid()), "-nosyslog", "-q"}
	if m.readOnly {
		args = append(args, "-ro")
	}
	c.cmd = exec.Command(m.bin, append(args, "--", m.cipherDir, m.mountPoint)...)
	c.cmd.Env = childEnv()
	c.cmd.Stdin = pr
	c.cmd.Stderr = c.stderr
	// If Moat dies, gocryptfs gets SIGTERM and unmounts itself.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}

	started := make(chan error, 1)
	go func() {
		// The parent-death signal follows the thread that forked, so that
		// thread stays locked to this goroutine (and alive) until the child
		// is reaped. Returning while locked retires the thread.
		runtime.LockOSThread()
		err := c.cmd.Start()
		pr.Close()
		started <- err
		if err != nil {
			return
		}
		c.cmd.Wait()
		c.state = c.cmd.ProcessState
		close(c.exited)
		if !c.stopping.Load() {
			close(c.dead)
		}
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("gocryptfs mount: start %s: %w", m.bin, err)
	}
	return c, nil
}

// awaitReady waits for SIGUSR1, the mountinfo entry and the sentinel.
func (m *Mount) awaitReady(ctx context.Context, c *child, sig <-chan os.Signal, fresh bool) (*os.Root, error) {
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	signalled := false
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gocryptfs mount %s: %w", m.mountPoint, ctx.Err())
		case <-deadline.C:
			return nil, fmt.Errorf("%w: gocryptfs did not become ready within %v: %s", ErrNotMounted, readyTimeout, c.stderr.tail())
		case <-c.exited:
			return nil, newExitError("mount", c.exitCode(), c.stderr.tail())
		case <-sig:
			signalled = true
		case <-tick.C:
		}
		if !signalled {
			continue
		}
		if err := m.checkEntry(); err != nil {
			continue // not visible yet
		}
		c.readyAt = time.Now()
		root, err := m.openVerified(fresh)
		if err != nil {
			return nil, err
		}
		return root, nil
	}
}

// openVerified opens the Root on the mount, checks it is FUSE, and reads
// (or, for a fresh volume, writes) the sentinel through it.
func (m *Mount) openVerified(fresh bool) (*os.Root, error) {
	root, err := os.OpenRoot(m.mountPoint)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotMounted, err)
	}
	if err := checkFUSE(root); err != nil {
		root.Close()
		return nil, err
	}
	if m.readOnly {
		return root, nil // a foreign volume has no sentinel, and none is written
	}
	m.mu.Lock()
	want := m.volID
	m.mu.Unlock()
	id, err := readSentinel(root)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist) && want == "":
		if !fresh {
			m.log.Warn("encrypted directory had no volume id; writing a new one", "cipherdir", m.cipherDir)
		}
		id, err = writeSentinel(root)
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("%w: volume id %s: %w", ErrNotMounted, sentinelName, err)
	}
	if want != "" && id != want {
		root.Close()
		return nil, fmt.Errorf("%w: volume id changed from %s to %s", ErrNotMounted, want, id)
	}
	m.mu.Lock()
	m.volID = id
	m.mu.Unlock()
	return root, nil
}

// checkEntry verifies the topmost mount at the mount point is our gocryptfs.
func (m *Mount) checkEntry() error {
	entries, err := readMountinfo()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotMounted, err)
	}
	e, ok := topMount(entries, m.mountPoint)
	if !ok {
		return fmt.Errorf("%w: no mount at %s", ErrNotMounted, m.mountPoint)
	}
	if e.FSType != fstypeGocryptfs || e.Source != m.cipherDir {
		return fmt.Errorf("%w: %s is a %s mount of %s, want %s of %s",
			ErrNotMounted, m.mountPoint, e.FSType, e.Source, fstypeGocryptfs, m.cipherDir)
	}
	return nil
}

func checkFUSE(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotMounted, err)
	}
	defer d.Close()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(d.Fd()), &st); err != nil {
		return fmt.Errorf("%w: statfs: %w", ErrNotMounted, err)
	}
	if uint32(st.Type) != unix.FUSE_SUPER_MAGIC {
		return fmt.Errorf("%w: filesystem magic %#x is not FUSE", ErrNotMounted, st.Type)
	}
	return nil
}

func readSentinel(root *os.Root) (string, error) {
	b, err := root.ReadFile(sentinelName)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(string(b), "\n")
	id, ok := strings.CutPrefix(s, sentinelPrefix)
	if !ok || len(id) != 32 {
		return "", fmt.Errorf("malformed content")
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", fmt.Errorf("malformed content")
	}
	return id, nil
}

// writeSentinel stores a new random volume id durably (tmp, fsync, rename,
// fsync of the directory).
func writeSentinel(root *os.Root) (string, error) {
	var raw [16]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	tmp := sentinelName + ".tmp"
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(sentinelPrefix + id + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := root.Rename(tmp, sentinelName); err != nil {
		return "", err
	}
	d, err := root.Open(".")
	if err != nil {
		return "", err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return "", err
	}
	return id, nil
}

// watch logs an unexpected exit of gocryptfs.
func (m *Mount) watch(c *child) {
	select {
	case <-c.dead:
		m.log.Error("gocryptfs exited unexpectedly; the encrypted directory is unavailable",
			"mountpoint", m.mountPoint, "exit", c.exitCode(), "stderr", c.stderr.tail())
	case <-c.exited:
	}
}

// Root is the os.Root opened on the verified mount point. All store I/O
// goes through it. It is nil after Close, and replaced by Remount (the old
// one is closed).
func (m *Mount) Root() *os.Root {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.root
}

// MountPoint is the resolved plaintext mount point.
func (m *Mount) MountPoint() string { return m.mountPoint }

// CipherDir is the resolved encrypted directory.
func (m *Mount) CipherDir() string { return m.cipherDir }

// VolumeID is the random id written into the volume at init.
func (m *Mount) VolumeID() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.volID
}

// Dead is closed when the current gocryptfs process exits unexpectedly.
// After Remount, call Dead again for the new process.
func (m *Mount) Dead() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.child == nil {
		return nil
	}
	return m.child.dead
}

// Check is the health check: gocryptfs running, the mountinfo entry
// (fuse.gocryptfs, source CipherDir), FUSE magic on the Root, and the
// sentinel reading back. Errors wrap ErrNotMounted or ErrClosed.
func (m *Mount) Check() error {
	m.mu.Lock()
	closed, root, c, want := m.closed, m.root, m.child, m.volID
	m.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if root == nil || c == nil {
		return fmt.Errorf("%w: no active mount", ErrNotMounted)
	}
	if c.hasExited() {
		return fmt.Errorf("%w: gocryptfs exited (code %d): %s", ErrNotMounted, c.exitCode(), c.stderr.tail())
	}
	if err := m.checkEntry(); err != nil {
		return err
	}
	if err := checkFUSE(root); err != nil {
		return err
	}
	id, err := readSentinel(root)
	if err != nil {
		return fmt.Errorf("%w: volume id: %w", ErrNotMounted, err)
	}
	if id != want {
		return fmt.Errorf("%w: volume id %s, want %s", ErrNotMounted, id, want)
	}
	return nil
}

// Remount replaces a dead or unhealthy mount: it closes the old Root,
// stops gocryptfs if it still runs, cleans the mount point (fusermount3 -u,
// then -uz), mounts again and verifies the same volume.
func (m *Mount) Remount(ctx context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	root, c := m.root, m.child
	m.root = nil
	m.mu.Unlock()
	if root != nil {
		root.Close()
	}
	if c != nil {
		if err := m.stop(c); err != nil {
			m.log.Warn("stopping old gocryptfs", "err", err)
		}
	}
	if err := m.mount(ctx, false); err != nil {
		return err
	}
	m.log.Info("encrypted directory remounted", "mountpoint", m.mountPoint)
	return nil
}

// Close unmounts. The caller closes its store first: open files keep the
// mount busy. It retries fusermount3 -u with backoff while busy, then waits
// for gocryptfs to exit 0; SIGTERM (lazy unmount) is the last resort.
func (m *Mount) Close() error {
	m.op.Lock()
	defer m.op.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	root, c := m.root, m.child
	m.root = nil
	m.mu.Unlock()
	defer clear(m.key)
	if root != nil {
		root.Close()
	}
	if c == nil {
		return nil
	}
	if err := m.stop(c); err != nil {
		return err
	}
	m.log.Info("encrypted directory unmounted", "mountpoint", m.mountPoint)
	return nil
}

// stop ends gocryptfs process c and leaves no mount behind.
func (m *Mount) stop(c *child) error {
	c.stopping.Store(true)
	if c.hasExited() {
		return m.cleanStale()
	}
	if c.readyAt.IsZero() {
		// Start gave up before the mount was ready: gocryptfs may still be
		// deriving the key or mounting. Kill it; a mount it left is dead
		// and cleanStale removes it.
		c.cmd.Process.Kill()
		m.reap(c)
		return m.cleanStale()
	}
	var lastErr error
	backoff := 20 * time.Millisecond
	deadline := time.Now().Add(unmountTimeout)
	for {
		lastErr = m.unmount(false)
		if lastErr == nil {
			break
		}
		if !m.mountedHere() {
			lastErr = nil // gone anyway (gocryptfs exited or someone unmounted it)
			break
		}
		if !errors.Is(lastErr, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, time.Second)
	}
	if lastErr == nil {
		select {
		case <-c.exited:
			if code := c.exitCode(); code != 0 {
				return fmt.Errorf("gocryptfs exited with code %d after unmount: %s", code, c.stderr.tail())
			}
			return nil
		case <-time.After(exitTimeout):
			lastErr = fmt.Errorf("gocryptfs still running %v after unmount", exitTimeout)
		}
	}
	// Last resort: gocryptfs unmounts lazily on SIGTERM.
	if wait := sigtermGrace - time.Since(c.readyAt); wait > 0 {
		time.Sleep(wait)
	}
	m.log.Warn("unmount failed; stopping gocryptfs with SIGTERM", "mountpoint", m.mountPoint, "err", lastErr)
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(exitTimeout):
		c.cmd.Process.Kill()
		m.reap(c)
	}
	if err := m.cleanStale(); err != nil {
		return errors.Join(lastErr, err)
	}
	return fmt.Errorf("unmount %s: %w; gocryptfs was stopped by signal (exit %d)", m.mountPoint, lastErr, c.exitCode())
}

// mountedHere reports whether anything is mounted at the mount point.
func (m *Mount) mountedHere() bool {
	entries, err := readMountinfo()
	if err != nil {
		return true
	}
	_, ok := topMount(entries, m.mountPoint)
	return ok
}

// errBusy marks an unmount refused because files are open.
var errBusy = fmt.Errorf("mount busy: %w", unix.EBUSY)

// unmount unmounts the mount point once, lazily (detach) if asked.
func (m *Mount) unmount(lazy bool) error {
	if m.fusermount == "" {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		if err := unix.Unmount(m.mountPoint, flags); err != nil {
			if errors.Is(err, unix.EBUSY) {
				return errBusy
			}
			return fmt.Errorf("umount %s: %w", m.mountPoint, err)
		}
		return nil
	}
	args := []string{"-u"}
	if lazy {
		args = append(args, "-z")
	}
	cmd := exec.Command(m.fusermount, append(args, m.mountPoint)...)
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return fmt.Errorf("%w: %s", errBusy, msg)
		}
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(m.fusermount), strings.Join(args, " "), err, msg)
	}
	return nil
}

// cleanStale removes dead gocryptfs mounts stacked on the mount point (a
// crash leaves them behind; stat gives ENOTCONN). It refuses a live
// gocryptfs mount (another process serves it) and any other filesystem.
//
// A live mount is given orphanWaits*orphanPoll to go away first.
func (m *Mount) cleanStale() error {
	liveWaits := 0
	for attempt := 0; ; attempt++ {
		entries, err := readMountinfo()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMountPoint, err)
		}
		top, mounted := topMount(entries, m.mountPoint)
		statErr := statTimeout(m.mountPoint, hungTimeout)
		if errors.Is(statErr, errHung) && mounted && strings.HasPrefix(top.FSType, "fuse") && attempt < 4 {
			// Nobody answers on the FUSE connection (a gocryptfs killed
			// while it held a file on its own mount hangs in exit): abort
			// it, which turns it into a dead mount.
			m.log.Warn("FUSE connection hangs; aborting it", "mountpoint", m.mountPoint)
			if err := abortFUSE(top.Minor); err != nil {
				return fmt.Errorf("%w: %s hangs and its FUSE connection could not be aborted: %w", ErrMountPoint, m.mountPoint, err)
			}
			continue
		}
		if !mounted {
			if statErr != nil && !errors.Is(statErr, unix.ENOENT) {
				return fmt.Errorf("%w: %s: %w", ErrMountPoint, m.mountPoint, statErr)
			}
			return nil
		}
		if top.FSType == "tmpfs" && statErr == nil {
			// A tmpfs holds nothing across restarts, so mounting over it
			// hides nothing; it is how a read-only root gets a mount
			// point fusermount3 accepts. mount checks it is empty.
			return nil
		}
		if top.FSType != fstypeGocryptfs {
			return fmt.Errorf("%w: %s already has a %s mount of %s; Moat mounts gocryptfs there itself: "+
				"remove that mount (a volume or bind mount there, or the image's VOLUME); with a read-only root, mount an empty tmpfs there instead",
				ErrMountPoint, m.mountPoint, top.FSType, top.Source)
		}
		if statErr == nil {
			// A Moat killed just now leaves its gocryptfs unmounting
			// itself (parent-death signal): give it a moment first.
			if liveWaits < orphanWaits {
				liveWaits++
				attempt-- // waiting is not a cleaning attempt
				time.Sleep(orphanPoll)
				continue
			}
			return fmt.Errorf("%w: %s is %w (of %s); is another Moat running?",
				ErrMountPoint, m.mountPoint, ErrServed, top.Source)
		}
		if attempt >= 4 {
			return fmt.Errorf("%w: could not remove the dead gocryptfs mount at %s (%w)", ErrMountPoint, m.mountPoint, statErr)
		}
		m.log.Warn("removing dead gocryptfs mount", "mountpoint", m.mountPoint, "stat", statErr.Error())
		if err := m.unmount(false); err != nil {
			if err := m.unmount(true); err != nil {
				m.log.Warn("lazy unmount failed", "mountpoint", m.mountPoint, "err", err)
			}
		}
	}
}

const (
	orphanWaits = 25
	orphanPoll  = 200 * time.Millisecond
)

// reap waits for a killed gocryptfs to exit. Killed at the wrong moment it
// hangs in exit flushing a file on its own mount; aborting the FUSE
// connection releases it.
func (m *Mount) reap(c *child) {
	select {
	case <-c.exited:
		return
	case <-time.After(hungTimeout):
	}
	if entries, err := readMountinfo(); err == nil {
		for _, e := range mountsAt(entries, m.mountPoint) {
			if e.FSType == fstypeGocryptfs && e.Source == m.cipherDir {
				m.log.Warn("killed gocryptfs hangs; aborting its FUSE connection", "mountpoint", m.mountPoint)
				if err := abortFUSE(e.Minor); err != nil {
					m.log.Error("aborting FUSE connection", "err", err)
				}
			}
		}
	}
	select {
	case <-c.exited:
	case <-time.After(exitTimeout):
		m.log.Error("gocryptfs does not exit after SIGKILL", "pid", c.cmd.Process.Pid)
	}
}

// hungTimeout is how long a stat of the mount point may take before the
// FUSE connection counts as hung.
const hungTimeout = 3 * time.Second

var errHung = errors.New("no answer from the filesystem")

// statTimeout stats path, giving up after d. A stat on a hung FUSE mount
// blocks uninterruptibly; the goroutine then returns once the connection
// is aborted.
func statTimeout(path string, d time.Duration) error {
	return withTimeout(d, func() error {
		var st unix.Stat_t
		return unix.Stat(path, &st)
	})
}

func lstatTimeout(path string, d time.Duration) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := withTimeout(d, func() error {
		var s unix.Stat_t
		err := unix.Lstat(path, &s)
		st = s
		return err
	})
	if err != nil {
		return unix.Stat_t{}, err
	}
	return st, nil
}

// withTimeout runs f, giving up after d with errHung.
func withTimeout(d time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return errHung
	}
}

const fusectlDir = "/sys/fs/fuse/connections"

// abortFUSE aborts FUSE connection minor through fusectl, mounting fusectl
// first if needed (it needs CAP_SYS_ADMIN; most systems mount it at boot).
func abortFUSE(minor uint32) error {
	p := filepath.Join(fusectlDir, strconv.FormatUint(uint64(minor), 10), "abort")
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount fusectl on %s: %w", fusectlDir, err)
		}
	}
	return os.WriteFile(p, []byte("1"), 0)
}

// stderrLog forwards gocryptfs's stderr lines to the log and keeps a short
// tail for error messages. gocryptfs never prints the password.
type stderrLog struct {
	log     *slog.Logger
	mu      sync.Mutex
	partial []byte
	head    []string
	lines   []string
	dropped int // lines that went through lines (some since dropped)
}

const (
	stderrHeadLines = 3
	stderrTailLines = 5
)

func (s *stderrLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		s.addLine(string(s.partial[:i]))
		s.partial = s.partial[i+1:]
	}
	if len(s.partial) > 4096 {
		s.addLine(string(s.partial))
		s.partial = nil
	}
	return len(p), nil
}

func (s *stderrLog) addLine(l string) {
	l = strings.TrimSpace(l)
	if l == "" {
		return
	}
	if len(l) > 512 {
		l = l[:512] + "…"
	}
	s.log.Warn("gocryptfs", "msg", l)
	// The first lines say what went wrong (a panic's message), the last
	// ones where it ended; the middle is dropped.
	if len(s.head) < stderrHeadLines {
		s.head = append(s.head, l)
		return
	}
	s.lines = append(s.lines, l)
	if len(s.lines) > stderrTailLines {
		s.lines = s.lines[len(s.lines)-stderrTailLines:]
	}
	s.dropped++
}

func (s *stderrLog) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]string(nil), s.head...)
	if s.dropped > len(s.lines) {
		out = append(out, "…")
	}
	out = append(out, s.lines...)
	if p := strings.TrimSpace(string(s.partial)); p != "" {
		out = append(out, p)
	}
	return strings.Join(out, "; ")
}
