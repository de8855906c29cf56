package main

import (
	"context"
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

func runServe(args []string, io stdio) int {
	// GOGC stays at Go's default (100) unless set: at 300 the heap of a
	// broker under reconnect churn grew to four times its live data and
	// its RSS kept climbing round after round (see README, Memory).
	fs := newFlags("serve", io)
	path := fs.String("c", "", "configuration file (mosquitto.conf syntax); default: local-only on 127.0.0.1:1883")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		fmt.Fprintf(io.err, "moat: %v\n", err)
		return 3
	}
	logger, err := logging.New(logging.Options{
		Format: cfg.Log.Format, Types: cfg.Log.Types, Dests: logDests(cfg), Stderr: io.err,
	})
	if err != nil {
		fmt.Fprintf(io.err, "moat: %v\n", err)
		return 3
	}
	defer logger.Close()
	log := logger.Logger
	// lego logs through one process-wide logger: route it into ours.
	legolog.Logger = certs.LegoLogger(log.With("component", "acme"))
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
	b, err := broker.New(broker.Options{Config: cfg, Logger: log, Env: os.Getenv, MemoryAdmit: plan.Admit})
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	if err := b.Start(); err != nil {
		log.Error("cannot start", "error", err)
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
