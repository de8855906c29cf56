// Package logging builds Moat's slog.Logger from mosquitto's log_dest,
// log_type and Moat's log_format, and keeps payloads and credentials out of
// every line: mochi logs whole packets ("pk") when a packet fails, and a
// packet carries payloads, passwords and Will messages. Client-supplied
// strings are escaped and truncated (sanitize.go).
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// Options selects format, level and destinations.
type Options struct {
	Format string          // "text" (default) or "json"
	Types  map[string]bool // mosquitto log_type values; empty: error, warning, notice, information
	// Dests are "stdout", "stderr", "none" or "file"; empty means stderr.
	Dests []Dest
	// Stderr replaces os.Stderr (tests).
	Stderr io.Writer
}

// Dest is one log destination.
type Dest struct {
	Kind string
	Path string
}

// Logger is a logger and the files it writes, reopened by Reopen (SIGHUP,
// for logrotate) and closed by Close.
type Logger struct {
	*slog.Logger
	out *reopener
}

// New builds the logger. Unsupported destinations (syslog, topic, dlt) are
// reported as an error so they are not silently lost.
func New(o Options) (*Logger, error) {
	level := Level(o.Types)
	var writers []io.Writer
	r := &reopener{}
	stderr := o.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	if len(o.Dests) == 0 {
		writers = append(writers, stderr)
	}
	for _, d := range o.Dests {
		switch d.Kind {
		case "stdout":
			writers = append(writers, os.Stdout)
		case "stderr":
			writers = append(writers, stderr)
		case "none":
		case "file":
			if err := r.add(d.Path); err != nil {
				r.Close()
				return nil, err
			}
		default:
			r.Close()
			return nil, fmt.Errorf("log_dest %s is not supported by Moat: use stdout, stderr or file", d.Kind)
		}
	}
	if len(r.files) > 0 {
		writers = append(writers, r)
	}
	w := io.MultiWriter(writers...)
	ho := &slog.HandlerOptions{Level: level, ReplaceAttr: redact}
	var h slog.Handler
	if o.Format == "json" {
		h = slog.NewJSONHandler(w, ho)
	} else {
		h = slog.NewTextHandler(w, ho)
	}
	return &Logger{Logger: slog.New(h), out: r}, nil
}

// Level maps mosquitto's log_type set to a minimum slog level.
func Level(types map[string]bool) slog.Level {
	switch {
	case types["debug"] || types["all"]:
		return slog.LevelDebug
	case len(types) == 0 || types["information"] || types["notice"] || types["subscribe"] || types["unsubscribe"] || types["websockets"]:
		return slog.LevelInfo
	case types["warning"]:
		return slog.LevelWarn
	case types["none"]:
		return slog.LevelError + 8
	default:
		return slog.LevelError
	}
}

// redacted reports attribute keys whose values may carry payloads or secrets.
func redacted(key string) bool {
	switch key {
	case "pk", "packet", "payload", "password", "Payload", "Password", "will", "token", "key", "secret":
		return true
	}
	return false
}

func redact(_ []string, a slog.Attr) slog.Attr {
	if redacted(a.Key) {
		return slog.String(a.Key, "[redacted]")
	}
	if a.Key == slog.TimeKey || a.Key == slog.LevelKey {
		return a
	}
	return sanitize(a)
}

// Reopen reopens log files, after logrotate moved them.
func (l *Logger) Reopen() error { return l.out.reopen() }

// Close closes log files.
func (l *Logger) Close() error { return l.out.Close() }

// reopener writes to files that can be reopened under a lock.
type reopener struct {
	mu    sync.Mutex
	paths []string
	files []*os.File
}

func (r *reopener) add(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("log_dest file %s: %w", path, err)
	}
	r.paths = append(r.paths, path)
	r.files = append(r.files, f)
	return nil
}

func (r *reopener) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.files {
		if _, err := f.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (r *reopener) reopen() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, path := range r.paths {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("log_dest file %s: %w", path, err)
		}
		r.files[i].Close()
		r.files[i] = f
	}
	return nil
}

func (r *reopener) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range r.files {
		f.Close()
	}
	r.files = nil
	return nil
}
