package logging

import (
	"log/slog"
	"sync"
	"time"
)

// LimitOptions configures a Limiter.
type LimitOptions struct {
	// Burst lines per key are logged in each Window; the rest are counted.
	Burst  int
	Window time.Duration
	// MaxKeys bounds the keys tracked; lines for further keys are counted
	// together under OtherKey until windows end.
	MaxKeys int
	// Message and KeyAttr name the summary line: Message, KeyAttr=key,
	// suppressed=N.
	Message, KeyAttr string
	// Now replaces time.Now (tests).
	Now func() time.Time
}

// OtherKey is the summary key of lines whose key could not be tracked.
const OtherKey = "(other)"

// Limiter rate-limits repeated log lines per key (a client network): a
// refused client that retries in a loop costs a few lines per window and
// one summary saying how many were left out, not a line per attempt.
// Memory is bounded by MaxKeys.
type Limiter struct {
	o   LimitOptions
	log *slog.Logger

	mu         sync.Mutex
	keys       map[string]*limitEntry
	other      int // lines of untracked keys since otherStart
	otherStart time.Time
	lastFlush  time.Time
	pending    bool // a flush timer is armed
}

type limitEntry struct {
	start      time.Time
	logged     int
	suppressed int
}

// NewLimiter returns a Limiter writing its summaries to log.
func NewLimiter(log *slog.Logger, o LimitOptions) *Limiter {
	if o.Burst <= 0 {
		o.Burst = 5
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Second
	}
	if o.MaxKeys <= 0 {
		o.MaxKeys = 4096
	}
	if o.Message == "" {
		o.Message = "repeated lines not logged"
	}
	if o.KeyAttr == "" {
		o.KeyAttr = "key"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Limiter{o: o, log: log, keys: map[string]*limitEntry{}}
}

// Allow reports whether a line for key may be logged now; when not, it is
// counted for the summary, which Flush writes once the window has ended
// (a timer calls it).
func (l *Limiter) Allow(key string) bool {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.keys[key]
	if e != nil && now.Sub(e.start) >= l.o.Window {
		l.summarize(key, e)
		e = nil
	}
	if e == nil {
		// Full: drop ended windows, at most once a window (a flood of
		// new keys must not make every call walk the map).
		if len(l.keys) >= l.o.MaxKeys && now.Sub(l.lastFlush) >= l.o.Window {
			l.flushLocked(now)
		}
		if len(l.keys) >= l.o.MaxKeys {
			if l.other == 0 {
				l.otherStart = now
			}
			l.other++
			l.arm()
			return false
		}
		e = &limitEntry{start: now}
		l.keys[key] = e
	}
	if e.logged < l.o.Burst {
		e.logged++
		return true
	}
	e.suppressed++
	l.arm()
	return false
}

// Flush writes the summaries of windows that have ended and forgets them.
func (l *Limiter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked(l.o.Now())
}

func (l *Limiter) flushLocked(now time.Time) {
	l.lastFlush = now
	for k, e := range l.keys {
		if now.Sub(e.start) >= l.o.Window {
			l.summarize(k, e)
		}
	}
	if l.other > 0 && now.Sub(l.otherStart) >= l.o.Window {
		l.log.Warn(l.o.Message, l.o.KeyAttr, OtherKey, "suppressed", l.other, "seconds", l.o.Window.Seconds())
		l.other = 0
	}
}

func (l *Limiter) summarize(k string, e *limitEntry) {
	if e.suppressed > 0 {
		l.log.Warn(l.o.Message, l.o.KeyAttr, k, "suppressed", e.suppressed, "seconds", l.o.Window.Seconds())
	}
	delete(l.keys, k)
}

// arm schedules a flush after the window, once: the summary is written
// even when the client stops retrying.
func (l *Limiter) arm() {
	if l.pending {
		return
	}
	l.pending = true
	time.AfterFunc(l.o.Window, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.pending = false
		l.flushLocked(l.o.Now())
		again := l.other > 0
		for _, e := range l.keys {
			again = again || e.suppressed > 0
		}
		if again {
			l.arm()
		}
	})
}
