package listen

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// handshakeLog logs failed TLS handshakes at warning level (on by default):
// an expired client CA, a client speaking plain MQTT to the TLS port or an
// old TLS version is otherwise invisible. A burst, then one per second per
// listener, with the count of lines left out, so a scanner cannot flood the log.
type handshakeLog struct {
	limit      *rate.Limiter
	suppressed atomic.Int64
}

func newHandshakeLog() *handshakeLog {
	return &handshakeLog{limit: rate.NewLimiter(rate.Every(time.Second), 10)}
}

func (l *Listener) logHandshake(remote string, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return // connected and left without a word: a probe, not a handshake
	}
	h := l.hsLog
	if !h.limit.Allow() {
		h.suppressed.Add(1)
		return
	}
	reason := err.Error()
	if len(reason) > 256 {
		reason = reason[:256] + "..."
	}
	l.log.Warn("TLS handshake failed", "listener", l.o.ID, "remote", remote, "reason", reason,
		"suppressed", h.suppressed.Swap(0))
}

// hsConn runs the server handshake at the first read and logs its failure.
type hsConn struct {
	*tls.Conn
	l    *Listener
	once sync.Once
	err  error
}

func (c *hsConn) Read(p []byte) (int, error) {
	c.once.Do(func() {
		if c.err = c.Conn.Handshake(); c.err != nil {
			c.l.logHandshake(c.Conn.RemoteAddr().String(), c.err)
		}
	})
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(p)
}

// httpErrorLog is the WebSocket server's error log: net/http reports a
// failed TLS handshake only there ("http: TLS handshake error from ADDR:
// REASON"), which goes to logHandshake; its other lines stay at debug.
func (l *Listener) httpErrorLog() *log.Logger {
	debug := slog.NewLogLogger(l.log.Handler(), slog.LevelDebug)
	return log.New(writerFunc(func(p []byte) (int, error) {
		line := strings.TrimSpace(string(p))
		if rest, ok := strings.CutPrefix(line, "http: TLS handshake error from "); ok {
			if i := strings.Index(rest, ": "); i > 0 {
				reason := rest[i+2:]
				if reason != "EOF" {
					l.logHandshake(rest[:i], errors.New(reason))
				}
				return len(p), nil
			}
		}
		debug.Print(line)
		return len(p), nil
	}), "", 0)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
