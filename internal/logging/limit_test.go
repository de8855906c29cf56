package logging

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterPerKeyWithSummary(t *testing.T) {
	var buf bytes.Buffer
	c := &fakeClock{t: time.Unix(1e9, 0)}
	l := NewLimiter(slog.New(slog.NewTextHandler(&buf, nil)), LimitOptions{Burst: 3, Window: time.Hour, Message: "refusals not logged", KeyAttr: "network", Now: c.now})
	allowed := 0
	for range 300 {
		if l.Allow("192.0.2.1/32") {
			allowed++
		}
	}
	if !l.Allow("192.0.2.2/32") {
		t.Error("another network was silenced")
	}
	if allowed != 3 {
		t.Fatalf("%d of 300 lines allowed, burst 3", allowed)
	}
	l.Flush()
	if buf.Len() != 0 {
		t.Fatalf("summary before the window ended: %s", buf.String())
	}
	c.advance(time.Hour)
	l.Flush()
	if out := buf.String(); strings.Count(out, "\n") != 1 || !strings.Contains(out, `msg="refusals not logged" network=192.0.2.1/32 suppressed=297`) {
		t.Fatalf("summary: %q", out)
	}
	if !l.Allow("192.0.2.1/32") {
		t.Error("a new window did not allow lines again")
	}
}

// Many keys cannot grow the limiter past MaxKeys: the excess is counted
// under OtherKey.
func TestLimiterBounded(t *testing.T) {
	var buf bytes.Buffer
	c := &fakeClock{t: time.Unix(1e9, 0)}
	l := NewLimiter(slog.New(slog.NewTextHandler(&buf, nil)), LimitOptions{Burst: 1, Window: time.Hour, MaxKeys: 100, KeyAttr: "network", Now: c.now})
	allowed := 0
	for i := range 100000 {
		if l.Allow(fmt.Sprint("net", i)) {
			allowed++
		}
	}
	if n := len(l.keys); n > 100 || allowed != 100 {
		t.Fatalf("%d keys held, %d lines allowed; bound 100", n, allowed)
	}
	c.advance(time.Hour)
	l.Flush()
	if !strings.Contains(buf.String(), "network="+OtherKey+" suppressed=99900") {
		t.Fatalf("summary: %q", buf.String())
	}
}

// The summary comes by itself once the window ends, even when the client
// stops retrying.
func TestLimiterSummaryWithoutFurtherLines(t *testing.T) {
	var buf syncBuf
	l := NewLimiter(slog.New(slog.NewTextHandler(&buf, nil)), LimitOptions{Burst: 1, Window: 50 * time.Millisecond, KeyAttr: "network"})
	for range 10 {
		l.Allow("a")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), "suppressed=9") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), "network=a suppressed=9") {
		t.Fatalf("no summary: %q", buf.String())
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
