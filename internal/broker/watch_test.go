package broker_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/passwd"
	"github.com/moat-mqtt/moat/internal/testenv"
)

// TestWatchHalfWrittenFile: an aclfile written in place in two steps (the
// grant line, then after a pause shorter than the watch interval the deny
// line) is applied only whole. A client checks the denied topic without a
// pause throughout; the half-written file, which would let it through,
// never takes effect.
func TestWatchHalfWrittenFile(t *testing.T) {
	const (
		interval = 600 * time.Millisecond
		pause    = 200 * time.Millisecond // well under interval, even on a loaded machine
		initial  = "user alice\ntopic readwrite alice/#\n"
		grant    = "user alice\ntopic readwrite alice/#\ntopic readwrite #\n"
		deny     = "topic deny secret/#\n"
	)
	tb := startBroker(t, setup{acl: initial})
	stop := tb.b.WatchFiles(interval)
	defer stop()
	alice := connect(t, tb.addr, as(5, "alice", "alice-watch"))

	reloads := 0
	for round := range 4 {
		// Back to the initial file, by rename: open/x is denied again.
		writeFile(t, tb.acl, initial)
		waitLog(t, tb.logs, reloads, "reloaded password and ACL files")
		reloads++
		if accepted(t, alice, "open/x") || accepted(t, alice, "secret/x") {
			t.Fatalf("round %d: initial aclfile not in force", round)
		}

		// The watcher polls in step with the reload just seen: start the
		// edit so that a watcher polling once an interval without waiting
		// for stability looks in the middle of the half-written window.
		time.Sleep(interval - pause/2)
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			if err := os.WriteFile(tb.acl, []byte(grant), 0o600); err != nil { // O_TRUNC, in place
				t.Error(err)
				return
			}
			time.Sleep(pause) // the editor's pause between two writes
			f, err := os.OpenFile(tb.acl, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			if _, err := f.WriteString(deny); err != nil {
				t.Error(err)
			}
		}()
		deadline := time.Now().Add(waitLong)
		checks := 0
		for {
			if accepted(t, alice, "secret/x") {
				<-wrote
				t.Fatalf("round %d: the half-written aclfile took effect (after %d checks)", round, checks)
			}
			checks++
			if accepted(t, alice, "open/x") {
				break // the whole file is in force
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the complete aclfile was not applied within %v", round, waitLong)
			}
		}
		<-wrote
		waitLog(t, tb.logs, reloads, "reloaded password and ACL files")
		reloads++
		if got := len(tb.logs.Lines("reloaded password and ACL files")); got != reloads {
			t.Fatalf("round %d: %d reloads, want %d (one per complete file)", round, got, reloads)
		}
		if b, _ := os.ReadFile(tb.acl); !strings.HasSuffix(string(b), deny) {
			t.Fatalf("round %d: aclfile is %q", round, b)
		}
		t.Logf("round %d: %d checks of secret/x while the file was written", round, checks)
	}
}

// removedUserGone checks that user's live session is closed and that the
// user can no longer log in, while other is still served.
func removedUserGone(t *testing.T, tb *testBroker, gone *client, user string, other *client) {
	t.Helper()
	if !gone.waitClosed() {
		t.Fatalf("%s still connected %v after the edit", user, waitLong)
	}
	c, ack := dial(t, tb.addr, as(5, user, user+"-again"))
	if ack.ReasonCode != authRefused(5) {
		t.Errorf("%s after the edit: CONNACK 0x%02x, want 0x%02x", user, ack.ReasonCode, authRefused(5))
	}
	c.drop()
	other.ping()
	if other.err() != nil {
		t.Errorf("a remaining user was disconnected: %v", other.err())
	}
}

// TestWatchPasswdEdits: a running Moat sees `moat passwd` edits of a
// bind-mounted password file, made on the host copy or through the mount
// (both rewrite in place), and an edit by rename of a plain file; a
// removed user's connected session ends and the user cannot log in again.
func TestWatchPasswdEdits(t *testing.T) {
	const interval = 200 * time.Millisecond
	t.Run("bind mount", func(t *testing.T) {
		tb := startBroker(t, setup{})
		host := filepath.Join(t.TempDir(), "passwd")
		data, err := os.ReadFile(tb.passwd)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(host, data, 0o600); err != nil {
			t.Fatal(err)
		}
		testenv.BindMount(t, host, tb.passwd, false)
		stop := tb.b.WatchFiles(interval)
		defer stop()
		alice := connect(t, tb.addr, as(5, "alice", "alice-live"))
		bob := connect(t, tb.addr, as(5, "bob", "bob-live"))
		admin := connect(t, tb.addr, as(5, "admin", "admin-live"))

		// moat passwd -D on the host's copy.
		if err := passwd.DeleteUser(host, "alice"); err != nil {
			t.Fatalf("delete on the host copy: %v", err)
		}
		removedUserGone(t, tb, alice, "alice", admin)
		// moat passwd -D through the mount, as inside the container.
		if err := passwd.DeleteUser(tb.passwd, "bob"); err != nil {
			t.Fatalf("delete through the bind mount: %v", err)
		}
		removedUserGone(t, tb, bob, "bob", admin)
	})
	t.Run("rename", func(t *testing.T) {
		tb := startBroker(t, setup{})
		stop := tb.b.WatchFiles(interval)
		defer stop()
		alice := connect(t, tb.addr, as(5, "alice", "alice-live"))
		admin := connect(t, tb.addr, as(5, "admin", "admin-live"))
		data, err := os.ReadFile(tb.passwd)
		if err != nil {
			t.Fatal(err)
		}
		var keep []string
		for _, l := range strings.SplitAfter(string(data), "\n") {
			if !strings.HasPrefix(l, "alice:") {
				keep = append(keep, l)
			}
		}
		writeFile(t, tb.passwd, strings.Join(keep, "")) // by rename
		removedUserGone(t, tb, alice, "alice", admin)
	})
}

// TestWatchMoatPasswdBinary runs the real binaries: `moat serve` on a
// password file bind-mounted from a host copy, and `moat passwd -D` on the
// host copy while the user is connected. The serve command's watcher
// applies the edit and the user's session ends; the other user stays.
func TestWatchMoatPasswdBinary(t *testing.T) {
	bin := moatBinary(t)
	dir := t.TempDir()
	port := freePort(t)
	_, pw, _ := writeSetup(t, dir, setup{})
	host := filepath.Join(t.TempDir(), "passwd")
	data, err := os.ReadFile(pw)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(host, data, 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.BindMount(t, host, pw, false)
	conf := filepath.Join(dir, "moat.conf")
	writeFile(t, conf, fmt.Sprintf("listener %d 127.0.0.1\nadmin_listener off\nallow_anonymous false\npassword_file passwd\n", port))

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	_, logs, _ := startServe(t, conf, addr)
	tb := &testBroker{t: t, dir: dir, addr: addr, logs: logs}
	alice := connect(t, addr, as(5, "alice", "alice-live"))
	bob := connect(t, addr, as(5, "bob", "bob-live"))

	out, err := exec.Command(bin, "passwd", "-D", host, "alice").CombinedOutput()
	if err != nil {
		t.Fatalf("moat passwd -D on the host copy: %v\n%s", err, out)
	}
	removedUserGone(t, tb, alice, "alice", bob)
	if n := len(logs.Lines("reloaded password and ACL files")); n != 1 {
		t.Errorf("%d reloads for one edit, want 1\n%s", n, logs)
	}
}
