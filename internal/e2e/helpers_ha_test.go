package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// haMoatBin returns the moat binary: MOAT_BIN (set by make test), else one
// built from the module into the test's temporary directory.
func haMoatBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MOAT_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("MOAT_BIN=%s: %v", p, err)
		}
		return p
	}
	root := haModuleRoot(t)
	out := filepath.Join(t.TempDir(), "moat")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/moat")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/moat: %v\n%s", err, b)
	}
	return out
}

// haModuleRoot walks up from the package directory to go.mod.
func haModuleRoot(t *testing.T) string {
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

// haFreePort returns a port on 127.0.0.1 that was free a moment ago. A
// child process needs the number in its configuration before it starts.
func haFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// haCopyFile copies a file with the given mode.
func haCopyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// haLog collects a child's output for later assertions.
type haLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *haLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *haLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// haMoat is a running `moat serve -c` child.
type haMoat struct {
	cmd  *exec.Cmd
	log  *haLog
	done chan struct{}
}

// haStartMoat writes conf to dir/moat.conf, starts moat on it and waits
// until every address in ready accepts TCP connections. The process is
// stopped (SIGTERM, then SIGKILL) when the test ends.
func haStartMoat(t *testing.T, dir, conf string, ready ...string) *haMoat {
	t.Helper()
	bin := haMoatBin(t)
	path := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &haMoat{log: &haLog{}, done: make(chan struct{})}
	m.cmd = exec.Command(bin, "serve", "-c", path)
	m.cmd.Dir = dir
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start moat: %v", err)
	}
	go func() {
		_ = m.cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(func() {
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(15 * time.Second):
			_ = m.cmd.Process.Kill()
			<-m.done
		}
		if t.Failed() {
			t.Logf("moat log:\n%s", m.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range ready {
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-m.done:
				t.Fatalf("moat exited before listening on %s: %s\n%s", addr, m.cmd.ProcessState, m.log.String())
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("moat not listening on %s after 30s:\n%s", addr, m.log.String())
			}
		}
	}
	return m
}

// haRun runs a command with a deadline and returns its stdout and stderr.
// The whole process group is killed when it ends or the deadline passes,
// so a browser leaves no children behind.
func haRun(t *testing.T, timeout time.Duration, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
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

func haTail(b []byte, n int) string {
	if len(b) > n {
		return "…" + string(b[len(b)-n:])
	}
	return string(b)
}

func haAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
