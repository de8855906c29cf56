package e2e

// Shared helpers: find or build the binaries, write configurations, run
// `moat serve -c` with every byte of its output captured, and run other
// programs with a deadline. The raw MQTT client is internal/mqtttest.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/internal/testenv"
)

// built holds the binaries built once for this test run.
var built struct {
	moatOnce sync.Once
	dir      string
	moat     string
	moatErr  error

	gcOnce sync.Once
	gc     string
	gcErr  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// RepoRoot is the module root (the directory holding go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// MoatBinary is $MOAT_BIN, or ./cmd/moat built once for this test run.
func MoatBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("MOAT_BIN"); p != "" {
		return p
	}
	root := RepoRoot(t)
	built.moatOnce.Do(func() {
		dir, err := os.MkdirTemp("", "moat-e2e-bin-")
		if err != nil {
			built.moatErr = err
			return
		}
		built.dir = dir
		bin := filepath.Join(dir, "moat")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/moat")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			built.moatErr = fmt.Errorf("go build ./cmd/moat: %v\n%s", err, out)
			return
		}
		built.moat = bin
	})
	if built.moatErr != nil {
		t.Fatal(built.moatErr)
	}
	return built.moat
}

// GocryptfsBinary is $GOCRYPTFS_BIN, else <repo>/bin/gocryptfs (built from
// the pinned module if missing), else gocryptfs on $PATH.
func GocryptfsBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("GOCRYPTFS_BIN"); p != "" {
		return p
	}
	root := RepoRoot(t)
	bin := filepath.Join(root, "bin", "gocryptfs")
	built.gcOnce.Do(func() {
		if _, err := os.Stat(bin); err == nil {
			built.gc = bin
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/rfjakob/gocryptfs/v2")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			if p, lerr := exec.LookPath("gocryptfs"); lerr == nil {
				built.gc = p
				return
			}
			built.gcErr = fmt.Errorf("building gocryptfs: %v\n%s", err, out)
			return
		}
		built.gc = bin
	})
	if built.gcErr != nil {
		testenv.Missing(t, "gocryptfs", "make build (or set GOCRYPTFS_BIN); "+built.gcErr.Error())
	}
	return built.gc
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: for
// a listener that must keep its port across a restart.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WriteFile writes data to path with perm, creating parent directories.
func WriteFile(t testing.TB, path, data string, perm os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteConfig writes the lines as dir/moat.conf and returns its path.
func WriteConfig(t testing.TB, dir string, lines ...string) string {
	t.Helper()
	return WriteFile(t, filepath.Join(dir, "moat.conf"), strings.Join(lines, "\n")+"\n", 0o600)
}

// syncBuffer collects a process's stdout and stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Moat is one `moat serve` process.
type Moat struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	state  *os.ProcessState
}

// StartMoat runs `moat serve -c config` with the test's environment plus
// env ("K=V"). The process is killed in Cleanup if still running, and its
// whole output is logged if the test failed. If the test process dies,
// the kernel kills Moat too (parent-death signal).
func StartMoat(t testing.TB, config string, env ...string) *Moat {
	t.Helper()
	return StartProcess(t, "moat", MoatBinary(t), []string{"serve", "-c", config}, env...)
}

// StartProcess runs any command the way StartMoat runs moat.
func StartProcess(t testing.TB, name, bin string, args []string, env ...string) *Moat {
	t.Helper()
	m := &Moat{t: t, name: name, out: &syncBuffer{}, exited: make(chan struct{})}
	m.cmd = exec.Command(bin, args...)
	m.cmd.Env = append(os.Environ(), env...)
	m.cmd.Stdout = m.out
	m.cmd.Stderr = m.out
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// The parent-death signal follows the forking thread: keep it
		// locked (and alive) until the child is reaped.
		runtime.LockOSThread()
		if err := m.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		m.cmd.Wait()
		m.state = m.cmd.ProcessState
		close(m.exited)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		if !m.HasExited() {
			m.cmd.Process.Kill()
			<-m.exited
		}
		if t.Failed() {
			t.Logf("--- output of %s (pid %d) ---\n%s", name, m.cmd.Process.Pid, tail(m.Output(), 300))
		}
	})
	return m
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = append([]string{fmt.Sprintf("… (%d lines omitted)", len(parts)-lines)}, parts[len(parts)-lines:]...)
	}
	return strings.Join(parts, "\n")
}

// Pid is the process id.
func (m *Moat) Pid() int { return m.cmd.Process.Pid }

// Output is everything the process wrote so far (stdout and stderr).
func (m *Moat) Output() string { return m.out.String() }

// HasExited reports whether the process has been reaped.
func (m *Moat) HasExited() bool {
	select {
	case <-m.exited:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status once exited; -1 if killed by a signal.
func (m *Moat) ExitCode() int {
	if !m.HasExited() {
		return -2
	}
	return m.state.ExitCode()
}

// WaitExit waits up to timeout for the process to end.
func (m *Moat) WaitExit(timeout time.Duration) (code int, ok bool) {
	select {
	case <-m.exited:
		return m.state.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// Stop sends SIGTERM and returns the exit code; it fails the test if the
// process does not end within 30 s.
func (m *Moat) Stop() int {
	m.t.Helper()
	if !m.HasExited() {
		m.cmd.Process.Signal(syscall.SIGTERM)
	}
	code, ok := m.WaitExit(30 * time.Second)
	if !ok {
		m.cmd.Process.Kill()
		<-m.exited
		m.t.Fatalf("%s did not stop within 30 s of SIGTERM", m.name)
	}
	return code
}

// Kill sends SIGKILL and waits for the process to be reaped.
func (m *Moat) Kill() {
	if !m.HasExited() {
		m.cmd.Process.Kill()
	}
	<-m.exited
}

// WaitTCP polls until addr accepts a connection. It fails the test if the
// process exits first or timeout passes.
func (m *Moat) WaitTCP(addr string, timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if m.HasExited() {
			m.t.Fatalf("%s exited (code %d) before listening on %s:\n%s", m.name, m.ExitCode(), addr, tail(m.Output(), 60))
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s not listening on %s after %v: %v", m.name, addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitOutput polls the output until re matches and returns the first
// submatches; it fails the test after timeout.
func (m *Moat) WaitOutput(re *regexp.Regexp, timeout time.Duration) []string {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if sm := re.FindStringSubmatch(m.Output()); sm != nil {
			return sm
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s output never matched %q within %v", m.name, re, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RunMoat runs `moat serve -c config` expecting it to exit on its own
// within timeout, and returns its exit code and output.
func RunMoat(t testing.TB, config string, timeout time.Duration, env ...string) (int, string) {
	t.Helper()
	m := StartMoat(t, config, env...)
	code, ok := m.WaitExit(timeout)
	if !ok {
		m.Kill()
		t.Fatalf("moat still running %v after start; expected it to exit:\n%s", timeout, tail(m.Output(), 60))
	}
	return code, m.Output()
}

// HTTPGet returns the status code and body of a GET.
func HTTPGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// MountsUnder lists the mount points in /proc/self/mountinfo at or below
// dir, with their filesystem types.
func MountsUnder(t testing.TB, dir string) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp != dir && !strings.HasPrefix(mp, dir+"/") {
			continue
		}
		for i, x := range f {
			if x == "-" && i+1 < len(f) {
				out[mp] = f[i+1]
			}
		}
	}
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// GuardMounts makes sure nothing stays mounted below dir and no process
// naming dir keeps running after the test: leftovers are removed in Cleanup
// and reported as a failure. Register it before starting anything that
// mounts there, so it runs after the processes' own Cleanup.
func GuardMounts(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		// gocryptfs unmounts itself shortly after Moat dies: give it time.
		deadline := time.Now().Add(10 * time.Second)
		for {
			pids, mounts := ProcessesMentioning(t, dir), MountsUnder(t, dir)
			if len(pids) == 0 && len(mounts) == 0 {
				return
			}
			if time.Now().After(deadline) {
				for _, pid := range pids {
					t.Errorf("process %d still running with %s on its command line; killing it", pid, dir)
					syscall.Kill(pid, syscall.SIGKILL)
				}
				time.Sleep(100 * time.Millisecond)
				for mp, fstype := range MountsUnder(t, dir) {
					t.Errorf("left mounted: %s (%s); detaching it", mp, fstype)
					syscall.Unmount(mp, syscall.MNT_DETACH)
				}
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// ProcessesMentioning lists other processes whose command line contains s.
func ProcessesMentioning(t testing.TB, s string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, []byte(s)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ChildPIDs lists the processes whose parent is pid, with their command
// names (/proc/PID/comm).
func ChildPIDs(t testing.TB, pid int) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil && ppid == pid {
			out[p] = s[strings.IndexByte(s, '(')+1 : i]
		}
	}
	return out
}

// mqttOptions fills the defaults of the tests' raw clients: MQTT 5, keep
// alive 60 s.
func mqttOptions(o mqtttest.Options) mqtttest.Options {
	if o.Version == 0 {
		o.Version = 5
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 60
	}
	return o
}

// CopyFile copies a file with the given mode.
func CopyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// Loopback is 127.0.0.1:port.
func Loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// RunCommand runs a command with a deadline and returns its stdout and
// stderr. The whole process group is killed when it ends or the deadline
// passes, so a browser leaves no children behind.
func RunCommand(t testing.TB, timeout time.Duration, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(timeout):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("%s: no result after %s", filepath.Base(name), timeout)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = fmt.Errorf("%s exited with %d", filepath.Base(name), ee.ExitCode())
	}
	return out.Bytes(), errb.Bytes(), err
}

// tailBytes is the last n bytes of b.
func tailBytes(b []byte, n int) string {
	if len(b) > n {
		return "…" + string(b[len(b)-n:])
	}
	return string(b)
}
