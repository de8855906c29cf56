package broker

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchFilesStable drives watchFiles directly: a file rewritten many
// times, each time sooner than the interval, is applied once, complete; a
// change made while apply reads is not put in force, and the watcher
// retries once the file is stable again.
func TestWatchFilesStable(t *testing.T) {
	const interval = 400 * time.Millisecond
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("v0"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	type call struct {
		data   string
		stable bool
	}
	calls := make(chan call, 100)
	var sabotage atomic.Bool // the next apply changes the file while it reads
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchFiles(ctx, slog.New(slog.DiscardHandler), []string{path}, interval, func(stable func() bool) error {
			b, _ := os.ReadFile(path)
			if sabotage.CompareAndSwap(true, false) {
				os.WriteFile(path, []byte("v3"), 0o600)
			}
			ok := stable()
			calls <- call{string(b), ok}
			if !ok {
				return errChangedDuringLoad
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	next := func() call {
		t.Helper()
		select {
		case c := <-calls:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("apply not called")
			return call{}
		}
	}

	// Ten in-place writes, each well within an interval of the last.
	for i := range 10 {
		if err := os.WriteFile(path, []byte("v1-"+string(rune('a'+i))), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(interval / 8)
	}
	if c := next(); c.data != "v1-j" || !c.stable {
		t.Fatalf("first apply: %+v, want the last write, stable", c)
	}

	sabotage.Store(true)
	if err := os.WriteFile(path, []byte("v2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.data != "v2" || c.stable {
		t.Fatalf("apply during a change: %+v, want v2 reported unstable", c)
	}
	if c := next(); c.data != "v3" || !c.stable {
		t.Fatalf("retry: %+v, want v3, stable", c)
	}
	select {
	case c := <-calls:
		t.Fatalf("unexpected apply %+v", c)
	case <-time.After(3 * interval):
	}
}
