package broker_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
)

// startReloadable starts a broker that reads conf again on every reload,
// as serve -c does.
func startReloadable(t *testing.T, dir, conf string) (*broker.Broker, *logBuffer) {
	t.Helper()
	path := filepath.Join(dir, "moat.conf")
	writeFile(t, path, conf)
	return startFromFile(t, path, nil, logging.Options{Types: map[string]bool{"all": true}}, true)
}

// startFromFile starts a broker from the configuration at path, logging
// through Moat's logging with lo (its Stderr is the returned buffer); with
// reload, a reload reads path again.
func startFromFile(t *testing.T, path string, env func(string) string, lo logging.Options, reload bool) (*broker.Broker, *logBuffer) {
	t.Helper()
	load := func() (*config.Config, error) { return config.Load(path, env) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	lo.Stderr = logs
	lg, err := logging.New(lo)
	if err != nil {
		t.Fatal(err)
	}
	o := broker.Options{Config: cfg, Logger: lg.Logger, Env: env}
	if reload {
		o.Load = load
	}
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		_ = b.Close(ctx)
	})
	return b, logs
}

// A reload reads moat.conf again: live settings apply, a change only a
// restart can apply refuses the whole reload (nothing of it applied), and
// warnings of the reloaded files reach the log.
func TestReloadReadsMoatConf(t *testing.T) {
	dir := t.TempDir()
	writePasswd(t, filepath.Join(dir, "passwd"), passwords)
	writePasswd(t, filepath.Join(dir, "passwd2"), map[string]string{"carol": "carol-pass"})
	const base = "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n"
	b, logs := startReloadable(t, dir, base)
	addr := b.Addr(listenerID).String()
	path := filepath.Join(dir, "moat.conf")
	carol := opts{v: 5, id: "carol", user: "carol", hasUser: true, pass: "carol-pass", hasPass: true, keepalive: 60}

	// (1) A restart-only change together with a live one: refused, and the
	// live one is not applied either.
	writeFile(t, path, strings.Replace(base, "password_file passwd", "password_file passwd2", 1)+"max_qos 1\n")
	err := b.Reload()
	if err == nil || !strings.Contains(err.Error(), "restart required: max_qos ("+path+":5)") {
		t.Fatalf("reload: %v, want restart required: max_qos (%s:5)", err, path)
	}
	if c, ack := dial(t, addr, carol); ack.ReasonCode == 0 {
		t.Error("a refused reload applied its new password_file")
		c.drop()
	}
	connect(t, addr, as(5, "alice", "alice-1")).disconnect()

	// (2) A listener change is refused with its line.
	writeFile(t, path, strings.Replace(base, "listener 0 127.0.0.1", "listener 0 ::1", 1))
	if err := b.Reload(); err == nil || !strings.Contains(err.Error(), "restart required: listener ("+path+":1)") {
		t.Fatalf("reload: %v, want restart required: listener (%s:1)", err, path)
	}

	// (3) Live: a new password_file path, connection messages off, and a
	// warning from the new configuration is logged.
	alice := connect(t, addr, as(5, "alice", "alice-2"))
	writeFile(t, path, strings.Replace(base, "password_file passwd", "password_file passwd2", 1)+"connection_messages false\npid_file /run/moat.pid\n")
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if !alice.waitClosed() {
		t.Error("alice, absent from the new password_file, still connected")
	}
	connected := len(logs.Lines("client connected"))
	connect(t, addr, carol).disconnect()
	if c, ack := dial(t, addr, as(5, "alice", "alice-3")); ack.ReasonCode == 0 {
		t.Error("alice still accepted after password_file moved to passwd2")
		c.drop()
	}
	if n := len(logs.Lines("client connected")); n != connected {
		t.Errorf("connection_messages false: %d new connect lines", n-connected)
	}
	if len(logs.Lines("pid_file is accepted and ignored")) == 0 {
		t.Error("warning of the reloaded moat.conf not logged")
	}

	// (4) A broken moat.conf keeps everything.
	writeFile(t, path, base+"frobnicate 1\n")
	if err := b.Reload(); err == nil || !strings.Contains(err.Error(), path+":5: unknown configuration variable") {
		t.Fatalf("reload: %v", err)
	}
	connect(t, addr, carol).disconnect()
}

// A reload may point a TLS listener at new certificate files; new
// handshakes get the new certificate. Missing new files refuse the reload.
func TestReloadChangesCertificateFiles(t *testing.T) {
	dir := t.TempDir()
	c1, k1 := writeCertFiles(t, dir, "one")
	c2, k2 := writeCertFiles(t, dir, "two")
	conf := "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous true\ncertfile %s\nkeyfile %s\n"
	b, _ := startReloadable(t, dir, fmt.Sprintf(conf, c1, k1))
	addr := b.Addr("mqtts:127.0.0.1:0").String()
	serial := func() string {
		t.Helper()
		c, err := tlsDial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()
	path := filepath.Join(dir, "moat.conf")
	writeFile(t, path, fmt.Sprintf(conf, filepath.Join(dir, "missing.crt"), k2))
	if err := b.Reload(); err == nil || !strings.Contains(err.Error(), "missing.crt") {
		t.Fatalf("reload with a missing certfile: %v", err)
	}
	if serial() != first {
		t.Fatal("refused reload changed the certificate")
	}
	writeFile(t, path, fmt.Sprintf(conf, c2, k2))
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if serial() == first {
		t.Error("still serving the old certificate after certfile changed")
	}
}

// Through the real binary: SIGHUP and the file watch both re-read
// moat.conf, and a restart-only change is reported with its line.
func TestServeReloadsMoatConf(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	writePasswd(t, filepath.Join(dir, "passwd"), passwords)
	writePasswd(t, filepath.Join(dir, "passwd2"), map[string]string{"carol": "carol-pass"})
	conf := filepath.Join(dir, "moat.conf")
	base := fmt.Sprintf("listener %d 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n", port)
	writeFile(t, conf, base)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd, logs, _ := startServe(t, conf, addr)
	deadline := time.Now().Add(waitLong)
	writeFile(t, conf, base+"max_packet_size 4096\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, 0, "restart required: max_packet_size ("+conf+":5)")

	// The file watch alone (no signal) applies a live change.
	writeFile(t, conf, strings.Replace(base, "password_file passwd", "password_file passwd2", 1))
	carol := opts{v: 5, id: "carol", user: "carol", hasUser: true, pass: "carol-pass", hasPass: true, keepalive: 60}
	for {
		c, ack := dial(t, addr, carol)
		c.drop()
		if ack.ReasonCode == 0 {
			break
		}
		if time.Now().After(deadline.Add(waitLong)) {
			t.Fatalf("moat.conf edit not applied by the file watch:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(conf); err != nil {
		t.Fatal(err)
	}
}

// A reload may move the log and change its level and format: serve swaps
// its logging, and every part follows.
func TestServeReloadsLogSettings(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	logA, logB := filepath.Join(dir, "a.log"), filepath.Join(dir, "b.log")
	conf := filepath.Join(dir, "moat.conf")
	base := fmt.Sprintf("listener %d 127.0.0.1\nadmin_listener off\nallow_anonymous true\n", port)
	writeFile(t, conf, base+"log_dest file "+logA+"\n")
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd, _, _ := startServe(t, conf, addr)
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return string(b)
	}
	waitFile := func(p string, words ...string) {
		t.Helper()
		deadline := time.Now().Add(waitLong)
		for {
			s := read(p)
			ok := true
			for _, w := range words {
				ok = ok && strings.Contains(s, w)
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s lacks %q:\n%s", p, words, s)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFile(logA, "moat started")
	connect(t, addr, anon(5, "before-swap")).disconnect()
	waitFile(logA, "before-swap")

	writeFile(t, conf, base+"log_dest file "+logB+"\nlog_format json\n")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFile(logB, `"msg":"reloaded password and ACL files"`)
	connect(t, addr, anon(5, "after-swap")).disconnect()
	waitFile(logB, `"client":"after-swap"`, `"component":"mqtt"`)
	if strings.Contains(read(logA), "after-swap") {
		t.Error("the old log file still receives lines after the reload")
	}
}

// startServe runs the real moat serve -c conf, killed when the test ends,
// and waits until it accepts connections on addr. exited yields Wait's
// result once (put it back for the clean-up when taking it).
func startServe(t *testing.T, conf, addr string) (cmd *exec.Cmd, logs *logBuffer, exited chan error) {
	t.Helper()
	logs = &logBuffer{}
	cmd = exec.Command(moatBinary(t), "serve", "-c", conf)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(waitLong)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return cmd, logs, exited
		}
		if time.Now().After(deadline) {
			t.Fatalf("moat did not listen on %s: %v\n%s", addr, err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// 200 reloads at once, of good and hostile moat.conf contents, while a
// client works: every refused one changes nothing, errors never quote a
// value, and the last good configuration is the one in force.
func TestReloadHostileAndConcurrent(t *testing.T) {
	dir := t.TempDir()
	writePasswd(t, filepath.Join(dir, "passwd"), passwords)
	const base = "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n"
	b, _ := startReloadable(t, dir, base)
	addr := b.Addr(listenerID).String()
	path := filepath.Join(dir, "moat.conf")
	bob := connect(t, addr, as(5, "bob", "bob-steady"))
	hostile := []string{
		base + "acl_file " + strings.Repeat("a", 64<<10) + "\n",
		base + "max_qos 1\x1b[31m\n",
		base + "persistence_key_file /run/secret-value-xyz\n",
		base + "log_dest file /proc/self/secret-value-xyz/\"ip=1.2.3.4\n",
		strings.Repeat("#", 70<<10) + "\n" + base,
		base + "listener 0 127.0.0.1\n",
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	wg.Add(1)
	go func() { // one writer, replacing the file as an editor would
		defer wg.Done()
		for i := range 3 * len(hostile) {
			tmp := fmt.Sprintf("%s.%d", path, i)
			if os.WriteFile(tmp, []byte(hostile[i%len(hostile)]), 0o600) == nil {
				_ = os.Rename(tmp, path)
			}
		}
	}()
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Reload(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if strings.Contains(err.Error(), "secret-value-xyz") || strings.Contains(err.Error(), "\x1b") {
			t.Errorf("a refused reload quoted a value: %.200q", err)
		}
	}
	if got := bob.publish("bob/x", "still", 1, false); got.code >= 0x80 && got.code != noAck {
		t.Errorf("bob after the reloads: 0x%02x", got.code)
	}
	writeFile(t, path, base)
	if err := b.Reload(); err != nil {
		t.Fatalf("the good configuration again: %v", err)
	}
	connect(t, addr, as(4, "alice", "alice-after")).disconnect()
}

// Connection limits change with a reload, for connections accepted after
// it; open ones stay.
func TestReloadChangesConnectionLimits(t *testing.T) {
	dir := t.TempDir()
	writePasswd(t, filepath.Join(dir, "passwd"), passwords)
	const base = "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n"
	b, _ := startReloadable(t, dir, base)
	addr := b.Addr(listenerID).String()
	path := filepath.Join(dir, "moat.conf")
	first := connect(t, addr, as(5, "alice", "limit-1"))
	second := connect(t, addr, as(5, "bob", "limit-2"))

	writeFile(t, path, strings.Replace(base, "listener 0 127.0.0.1\n", "listener 0 127.0.0.1\nmax_connections_per_ip 2\n", 1))
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	// Two open from 127.0.0.1: a third gets no CONNACK, not even a refusal.
	refused := func() bool {
		c, err := net.DialTimeout("tcp", addr, waitLong)
		if err != nil {
			return true
		}
		defer c.Close()
		_, _ = c.Write([]byte{0x10, 0x0d, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 1, 'x'})
		_ = c.SetReadDeadline(time.Now().Add(waitLong))
		b := make([]byte, 1)
		_, err = c.Read(b)
		return err != nil || b[0] != 0x20
	}
	if !refused() {
		t.Error("a third connection from one address was not refused after max_connections_per_ip 2")
	}
	first.ping()
	second.ping()

	writeFile(t, path, base)
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if refused() {
		t.Error("a third connection refused after the limit was lifted")
	}
	writeFile(t, path, base)
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	connect(t, addr, as(5, "admin", "limit-3")).disconnect()
}

// After a reload moves password_file, the file watch follows: an edit of
// the new file applies without a signal.
func TestWatchFollowsMovedPasswordFile(t *testing.T) {
	dir := t.TempDir()
	writePasswd(t, filepath.Join(dir, "passwd"), passwords)
	writePasswd(t, filepath.Join(dir, "passwd2"), map[string]string{"carol": "carol-pass"})
	const base = "listener 0 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n"
	b, _ := startReloadable(t, dir, base)
	stop := b.WatchFiles(100 * time.Millisecond)
	defer stop()
	addr := b.Addr(listenerID).String()
	writeFile(t, filepath.Join(dir, "moat.conf"), strings.Replace(base, "password_file passwd", "password_file passwd2", 1))
	carol := opts{v: 5, id: "carol", user: "carol", hasUser: true, pass: "carol-pass", hasPass: true, keepalive: 60}
	dave := opts{v: 5, id: "dave", user: "dave", hasUser: true, pass: "dave-pass", hasPass: true, keepalive: 60}
	accepted := func(o opts) bool {
		c, ack := dial(t, addr, o)
		c.drop()
		return ack.ReasonCode == 0
	}
	deadline := time.Now().Add(waitLong)
	for !accepted(carol) {
		if time.Now().After(deadline) {
			t.Fatal("moat.conf edit not applied by the watch")
		}
		time.Sleep(50 * time.Millisecond)
	}
	writePasswd(t, filepath.Join(dir, "passwd2"), map[string]string{"carol": "carol-pass", "dave": "dave-pass"})
	for !accepted(dave) {
		if time.Now().After(deadline.Add(waitLong)) {
			t.Fatal("an edit of the new password_file was not applied by the watch")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
