package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"github.com/moat-mqtt/moat/internal/logging"
)

// liveLog is the process's logging, replaceable by a reload: every logger
// derived from it (each part adds its own attributes) follows the swap.
type liveLog struct {
	root atomic.Pointer[logging.Logger]
}

// Handler returns the handler to build the process's *slog.Logger on.
func (l *liveLog) Handler() slog.Handler { return &swapHandler{live: l} }

// Swap puts next in force and closes the files of the previous logger.
func (l *liveLog) Swap(next *logging.Logger) {
	if old := l.root.Swap(next); old != nil && old != next {
		_ = old.Close()
	}
}

// Reopen reopens the current logger's files (SIGHUP, logrotate).
func (l *liveLog) Reopen() error { return l.root.Load().Reopen() }

// Close closes the current logger's files.
func (l *liveLog) Close() error { return l.root.Load().Close() }

// swapHandler applies its attributes and groups to whichever handler is
// current, caching the result until the next swap.
type swapHandler struct {
	live  *liveLog
	ops   []func(slog.Handler) slog.Handler
	cache atomic.Pointer[derived]
}

type derived struct {
	from *logging.Logger
	h    slog.Handler
}

func (s *swapHandler) current() slog.Handler {
	root := s.live.root.Load()
	if d := s.cache.Load(); d != nil && d.from == root {
		return d.h
	}
	h := root.Handler()
	for _, op := range s.ops {
		h = op(h)
	}
	s.cache.Store(&derived{from: root, h: h})
	return h
}

func (s *swapHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return s.current().Enabled(ctx, l)
}

func (s *swapHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.current().Handle(ctx, r)
}

func (s *swapHandler) with(op func(slog.Handler) slog.Handler) slog.Handler {
	ops := append(append([]func(slog.Handler) slog.Handler(nil), s.ops...), op)
	return &swapHandler{live: s.live, ops: ops}
}

func (s *swapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return s.with(func(h slog.Handler) slog.Handler { return h.WithAttrs(attrs) })
}

func (s *swapHandler) WithGroup(name string) slog.Handler {
	return s.with(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}
