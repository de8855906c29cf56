package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	legolog "github.com/go-acme/lego/v4/log"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/memlimit"
)

// shutdownGrace bounds a graceful stop.
const shutdownGrace = 10 * time.Second

// loadConfig reads -c FILE, or the embedded local-only default.
func loadConfig(path string) (*config.Config, error) {
	if path == "" {
		return config.Default(), nil
	}
	return config.Load(path, os.Getenv)
}

func newFlags(name string, io stdio) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.err)
	return fs
}

// parseFlags parses args; ok is false when the command should exit with
// code: 0 after -h/--help (usage on stdout), 2 after a usage error (the
// flag package has printed it on stderr).
func parseFlags(fs *flag.FlagSet, args []string, io stdio) (code int, ok bool) {
	// The flag package prints before it returns: hold its output until
	// it is known whether help was asked for.
	var msg bytes.Buffer
	fs.SetOutput(&msg)
	err := fs.Parse(args)
	switch {
	case err == nil:
		fs.SetOutput(io.err)
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(io.out)
		fs.Usage()
		return 0, false
	default:
		_, _ = io.err.Write(msg.Bytes())
		return 2, false
	}
}

func runServe(args []string, io stdio) int {
	// GOGC stays at Go's default (100) unless set: at 300 the heap of a
	// broker under reconnect churn grew to four times its live data and
	// its RSS kept climbing round after round (see README, Memory).
	fs := newFlags("serve", io)
	path := fs.String("c", "", "configuration file (mosquitto.conf syntax); default: local-only on 127.0.0.1:1883")
	if code, ok := parseFlags(fs, args, io); !ok {
		return code
	}
	if fs.NArg() > 0 {
		// Without -c, serve would run the local-only default and ignore the file.
		fmt.Fprintf(io.err, "moat: serve takes no arguments; to use %s as the configuration: moat serve -c %s\n", fs.Arg(0), fs.Arg(0))
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintf(io.err, "moat: %v\n", err)
		return 3
	}
	newLogger := func(cfg *config.Config) (*logging.Logger, error) {
		return logging.New(logging.Options{Format: cfg.Log.Format, Types: cfg.Log.Types, Dests: logDests(cfg), Stderr: io.err})
	}
	first, err := newLogger(cfg)
	if err != nil {
		fmt.Fprintf(io.err, "moat: %v\n", err)
		return 3
	}
	// A reload may change log_dest, log_type and log_format: every part
	// logs through a handler that follows the swap.
	logger := &liveLog{}
	logger.Swap(first)
	defer logger.Close()
	log := slog.New(logger.Handler())
	// lego logs through one process-wide logger: route it into ours.
	legolog.Logger = certs.LegoLogger(log) // it adds component=lego
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	if cfg.LocalOnly {
		log.Info("no listener configured: local-only mode on 127.0.0.1:1883, anonymous clients allowed")
	}

	// SIGHUP is caught before the broker starts so an early reload signal
	// cannot kill the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	plan := applyMemoryLimit(cfg, log)
	o := broker.Options{Config: cfg, Logger: log, Env: os.Getenv, MemoryAdmit: plan.Admit,
		Logs: func(next *config.Config) (func(), error) {
			l, err := newLogger(next)
			if err != nil {
				return nil, err
			}
			return func() { logger.Swap(l) }, nil
		},
	}
	if *path != "" {
		// A reload reads moat.conf again through the same load and checks.
		o.Load = func() (*config.Config, error) { return config.Load(*path, os.Getenv) }
	}
	b, err := broker.New(o)
	if err != nil {
		fatal(io, cfg, log, err)
		return 1
	}
	if err := b.Start(); err != nil {
		fatal(io, cfg, log, err)
		return 1
	}
	log.Info("moat started", "version", version, "listeners", len(cfg.Listeners))
	stopWatch := b.WatchFiles(2 * time.Second)
	defer stopWatch()

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if err := logger.Reopen(); err != nil {
				log.Error("log reopen failed", "error", err)
			}
			if err := b.Reload(); err != nil {
				log.Error(err.Error())
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String())
		break
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		log.Error("shutdown", "error", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// fatal logs a start-up error and, when the log does not already go to
// stderr, prints it there too: a container runtime shows only stderr and
// stdout, and a restart loop with an empty `docker logs` explains nothing.
func fatal(io stdio, cfg *config.Config, log *slog.Logger, err error) {
	log.Error("cannot start", "error", err)
	if logsToStderr(cfg) {
		return
	}
	printErr(io, fmt.Errorf("cannot start: %w", err))
}

func logsToStderr(cfg *config.Config) bool {
	if len(cfg.Log.Dests) == 0 {
		return true
	}
	for _, d := range cfg.Log.Dests {
		if d.Kind == "stderr" {
			return true
		}
	}
	return false
}

// applyMemoryLimit tells the runtime the memory it may use: memory_limit,
// else the container's cgroup limit; GOMEMLIMIT in the environment wins
// for the runtime. It returns the plan, whose Admit the broker refuses new
// connections at.
func applyMemoryLimit(cfg *config.Config, log *slog.Logger) memlimit.Plan {
	cg, file, err := memlimit.Cgroup(os.DirFS("/"))
	if err != nil {
		log.Warn("container memory limit not read", "error", err)
	}
	env := os.Getenv("GOMEMLIMIT")
	plan := memlimit.Decide(cfg.Memory.Limit, cg, file, env, debug.SetMemoryLimit(-1))
	if plan.Runtime > 0 {
		debug.SetMemoryLimit(plan.Runtime)
	}
	if plan.Limit > 0 {
		log.Info("memory limit", "limit_bytes", plan.Limit, "source", plan.Source,
			"gomemlimit_bytes", debug.SetMemoryLimit(-1), "refuse_connections_at_bytes", plan.Admit)
	}
	return plan
}

func logDests(cfg *config.Config) []logging.Dest {
	out := make([]logging.Dest, 0, len(cfg.Log.Dests))
	for _, d := range cfg.Log.Dests {
		out = append(out, logging.Dest{Kind: d.Kind, Path: d.Path})
	}
	return out
}
