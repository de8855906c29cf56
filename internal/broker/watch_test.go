package broker_test

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestWatchHalfWrittenFile: an aclfile written in place in two steps (the
// grant line, then after a pause shorter than the watch interval the deny
// line) is applied only whole. A client checks the denied topic without a
// pause throughout; the half-written file, which would let it through,
// never takes effect.
func TestWatchHalfWrittenFile(t *testing.T) {
	const (
		interval = 400 * time.Millisecond
		pause    = 250 * time.Millisecond
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

		// The watcher polls in step with the reload just seen; start the
		// edit at a different phase each round so that a watcher which
		// does not wait for stability would catch the half-written file.
		time.Sleep(interval * time.Duration(round+1) / 5)
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
		if got := len(tb.logs.lines("reloaded password and ACL files")); got != reloads {
			t.Fatalf("round %d: %d reloads, want %d (one per complete file)", round, got, reloads)
		}
		if b, _ := os.ReadFile(tb.acl); !strings.HasSuffix(string(b), deny) {
			t.Fatalf("round %d: aclfile is %q", round, b)
		}
		t.Logf("round %d: %d checks of secret/x while the file was written", round, checks)
	}
}
