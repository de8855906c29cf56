package certs

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	legolog "github.com/go-acme/lego/v4/log"
)

// LegoLogger adapts slog to lego's package logger. lego logs through one
// process-wide variable, so the program (not this package) installs it once:
//
//	legolog.Logger = certs.LegoLogger(logger)
//
// lego's "[INFO] "/"[WARN] " prefixes become slog levels; INFO maps to Debug
// because lego narrates every protocol step.
func LegoLogger(l *slog.Logger) legolog.StdLogger { return legoSlog{l: l.With("component", "lego")} }

type legoSlog struct{ l *slog.Logger }

func (s legoSlog) emit(msg string) {
	msg = strings.TrimRight(msg, "\n")
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(msg, "[WARN] "):
		level, msg = slog.LevelWarn, msg[len("[WARN] "):]
	case strings.HasPrefix(msg, "[INFO] "):
		msg = msg[len("[INFO] "):]
	}
	s.l.Log(context.Background(), level, msg)
}

func (s legoSlog) Print(args ...any)                 { s.emit(fmt.Sprint(args...)) }
func (s legoSlog) Println(args ...any)               { s.emit(fmt.Sprintln(args...)) }
func (s legoSlog) Printf(format string, args ...any) { s.emit(fmt.Sprintf(format, args...)) }

// Fatal keeps lego's contract (log, then exit); the library paths Moat uses
// never call it.
func (s legoSlog) Fatal(args ...any) { s.l.Error(fmt.Sprint(args...)); os.Exit(1) }
func (s legoSlog) Fatalln(args ...any) {
	s.l.Error(strings.TrimRight(fmt.Sprintln(args...), "\n"))
	os.Exit(1)
}
func (s legoSlog) Fatalf(format string, args ...any) {
	s.l.Error(fmt.Sprintf(format, args...))
	os.Exit(1)
}
