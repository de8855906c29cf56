package broker_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/passwd"
)

// moatBinary is the moat command: $MOAT_BIN (set by make test), else a
// fresh build.
func moatBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MOAT_BIN"); p != "" {
		return p
	}
	gobin := testenvGo(t)
	out := filepath.Join(t.TempDir(), "moat")
	cmd := exec.Command(gobin, "build", "-o", out, "github.com/moat-mqtt/moat/cmd/moat")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/moat: %v\n%s", err, b)
	}
	return out
}

func testenvGo(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("no go command to build moat; set MOAT_BIN")
	}
	return p
}

// freePort returns a port that was free a moment ago on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitLog polls until the log has more than n lines containing all words.
func waitLog(t *testing.T, logs *logBuffer, n int, words ...string) []string {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		if l := logs.Lines(words...); len(l) > n {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; log:\n%s", words, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// accepted publishes at MQTT 5 QoS 1 and reports whether it was accepted.
func accepted(t *testing.T, c *client, topic string) bool {
	t.Helper()
	code := c.publish(topic, "x", 1, false).code
	if code != 0 && code != 0x10 && code != 0x87 {
		t.Fatalf("publish %s: unexpected 0x%02x", topic, code)
	}
	return code < 0x80
}

// TestReloadSIGHUP runs the real binary: a broken aclfile or a missing
// password_file on SIGHUP keeps the previous policy in force (mosquitto
// 2.0.11 fails open there) and logs one error line naming file:line; a
// fixed file applies at the next SIGHUP.
func TestReloadSIGHUP(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	_, pw, aclPath := writeSetup(t, dir, setup{acl: tableBACL})
	conf := filepath.Join(dir, "moat.conf")
	writeFile(t, conf, fmt.Sprintf("listener %d 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\nacl_file acl\n", port))

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd, logs, exited := startServe(t, conf, addr)
	hup := func() {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	alice := connect(t, addr, as(5, "alice", "alice-live"))
	if accepted(t, alice, "bob/x") || !accepted(t, alice, "alice/x") {
		t.Fatal("initial ACL not enforced")
	}

	// (a) a tab on line 2: the reload is refused, the old ACL stays.
	refusals := len(logs.Lines("reload refused"))
	writeFile(t, aclPath, "pattern readwrite %u/#\npattern\treadwrite #\n")
	hup()
	lines := waitLog(t, logs, refusals, "reload refused")
	if !strings.Contains(lines[len(lines)-1], aclPath+":2:") || !strings.Contains(lines[len(lines)-1], "level=ERROR") {
		t.Errorf("error line does not name %s:2: %s", aclPath, lines[len(lines)-1])
	}
	fresh := connect(t, addr, as(5, "alice", "alice-fresh"))
	for _, c := range []*client{alice, fresh} {
		if accepted(t, c, "bob/x") {
			t.Error("broken aclfile reload failed open: alice wrote bob/x")
		}
		if !accepted(t, c, "alice/x") {
			t.Error("broken aclfile reload failed closed: alice cannot write alice/x")
		}
	}

	// The fixed file grants alice bob/x.
	reloads := len(logs.Lines("reloaded password and ACL files"))
	writeFile(t, aclPath, "pattern readwrite %u/#\nuser alice\ntopic write bob/x\n")
	hup()
	waitLog(t, logs, reloads, "reloaded password and ACL files")
	if !accepted(t, alice, "bob/x") || !accepted(t, alice, "alice/x") {
		t.Error("fixed aclfile not applied")
	}

	// (b) password_file deleted: the users stay as they were.
	refusals = len(logs.Lines("reload refused"))
	if err := os.Remove(pw); err != nil {
		t.Fatal(err)
	}
	hup()
	lines = waitLog(t, logs, refusals, "reload refused")
	if !strings.Contains(lines[len(lines)-1], "password_file") {
		t.Errorf("error line does not name password_file: %s", lines[len(lines)-1])
	}
	connect(t, addr, as(5, "alice", "alice-after")).disconnect()
	connect(t, addr, as(4, "bob", "bob-after")).disconnect()
	if c, ack := dial(t, addr, opts{v: 5, id: "x", user: "alice", hasUser: true, pass: "any", hasPass: true}); ack.ReasonCode != 0x87 {
		t.Errorf("wrong password after a failed reload: CONNACK 0x%02x, want 0x87", ack.ReasonCode)
		c.drop()
	}
	for _, pw := range passwords {
		if strings.Contains(logs.String(), pw) {
			t.Error("a password reached the log")
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("moat exit after SIGTERM: %v\n%s", err, logs)
		}
	case <-time.After(waitLong):
		t.Errorf("moat did not stop after SIGTERM")
	}
}

// setPassword rewrites one user's line, leaving the others byte for byte.
func setPassword(t *testing.T, path, user, pw string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := passwd.Hash([]byte(pw), "sha512-pbkdf2", 1000)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, user+":") {
			lines[i] = user + ":" + h
		}
	}
	writeFile(t, path, strings.Join(lines, "\n")+"\n")
}

// TestReloadPasswordChange: a changed password disconnects its user at
// the reload; the old password no longer works; other users stay.
func TestReloadPasswordChange(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			setPassword(t, tb.passwd, "alice", passwords["alice"])
			if err := tb.b.Reload(); err != nil {
				t.Fatal(err)
			}
			alice := connect(t, tb.addr, as(v, "alice", "alice-pw"))
			bob := connect(t, tb.addr, as(v, "bob", "bob-pw"))
			setPassword(t, tb.passwd, "alice", "new-pass")
			if err := tb.b.Reload(); err != nil {
				t.Fatal(err)
			}
			if !alice.waitClosed() {
				t.Fatal("alice still connected after her password changed")
			}
			c, ack := dial(t, tb.addr, as(v, "alice", "alice-old"))
			if ack.ReasonCode != authRefused(v) {
				t.Errorf("old password: CONNACK 0x%02x, want 0x%02x", ack.ReasonCode, authRefused(v))
			}
			c.drop()
			connect(t, tb.addr, opts{v: v, id: "alice-new", user: "alice", hasUser: true, pass: "new-pass", hasPass: true, keepalive: 60}).disconnect()
			bob.ping()
			if got := bob.publish("bob/x", "still here", 1, false); got.code >= 0x80 && got.code != noAck {
				t.Errorf("bob after the reload: 0x%02x", got.code)
			}
			bob.disconnect()
		})
	}
}

const revokeACL = "user alice\ntopic read alice/secret\ntopic readwrite alice/end/#\nuser admin\ntopic readwrite #\n"

// revokeSetup subscribes alice to alice/secret and checks a message gets
// through; it returns alice and admin.
func revokeSetup(t *testing.T, tb *testBroker) (alice, admin *client) {
	t.Helper()
	alice = connect(t, tb.addr, as(5, "alice", "alice-sub"))
	alice.mustSubscribe("alice/secret", "alice/end/#")
	admin = connect(t, tb.addr, as(5, "admin", "admin-pub"))
	admin.publish("alice/secret", "before", 1, false)
	if !alice.waitTopic("alice/secret") {
		t.Fatal("alice/secret not delivered before the change")
	}
	return alice, admin
}

// TestReloadRevokesLiveSubscription: an ACL edit applies to subscriptions
// made before it, at the next message.
func TestReloadRevokesLiveSubscription(t *testing.T) {
	tb := startBroker(t, setup{acl: revokeACL})
	alice, admin := revokeSetup(t, tb)
	writeFile(t, tb.acl, strings.Replace(revokeACL, "topic read alice/secret\n", "", 1))
	if err := tb.b.Reload(); err != nil {
		t.Fatal(err)
	}
	admin.publish("alice/secret", "after", 1, false)
	admin.publish("alice/end/1", "marker", 1, false)
	if !alice.waitTopic("alice/end/1") {
		t.Fatal("marker not delivered")
	}
	if got := alice.topics(); len(got) != 2 || got[0] != "alice/secret" {
		t.Errorf("alice received %v, want [alice/secret alice/end/1]", got)
	}
	if alice.err() != nil {
		t.Errorf("alice disconnected by an ACL change: %v", alice.err())
	}
}

// TestWatchFiles: an edit is noticed without SIGHUP; a broken edit is
// refused by the watcher as by SIGHUP.
func TestWatchFiles(t *testing.T) {
	tb := startBroker(t, setup{acl: revokeACL})
	stop := tb.b.WatchFiles(200 * time.Millisecond)
	defer stop()
	alice, admin := revokeSetup(t, tb)

	writeFile(t, tb.acl, "user alice\ntopic read alice/secret\n\tbroken\n")
	waitLog(t, tb.logs, 0, "reload refused", tb.acl+":3:")
	admin.publish("alice/secret", "still", 1, false)
	admin.publish("alice/end/0", "marker", 1, false)
	if !alice.waitTopic("alice/end/0") || len(alice.topics()) != 3 {
		t.Fatalf("broken edit changed the policy: alice received %v", alice.topics())
	}

	start := time.Now()
	writeFile(t, tb.acl, strings.Replace(revokeACL, "topic read alice/secret\n", "", 1))
	for i := 1; ; i++ {
		if time.Since(start) > waitLong {
			t.Fatalf("edit not applied after %v", waitLong)
		}
		admin.publish("alice/secret", "after", 1, false)
		marker := fmt.Sprintf("alice/end/%d", i)
		admin.publish(marker, "marker", 1, false)
		if !alice.waitTopic(marker) {
			t.Fatal("marker not delivered")
		}
		n := 0
		for _, tp := range alice.topics() {
			if tp == "alice/secret" {
				n++
			}
		}
		if n == 2+i { // "before", "still", and one per round while the old ACL holds
			time.Sleep(50 * time.Millisecond) // polling interval, not a correctness wait
			continue
		}
		t.Logf("edit applied %v after the write (poll every 200ms)", time.Since(start).Round(time.Millisecond))
		break
	}
	waitLog(t, tb.logs, 0, "reloaded password and ACL files")
}
