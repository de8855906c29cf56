// Package brokertest starts a whole Moat broker in a test's process, on
// loopback, with Moat's own logging pipeline; the rest of the shared test
// support (log buffer, poller, test CA) is in its parent, moattest, which
// part-level tests import without pulling in the broker.
package brokertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/moattest"
)

// Broker is a whole Moat running in the test's process.
type Broker struct {
	*broker.Broker
	Dir  string // the configuration's directory
	Conf string // moat.conf
	Logs *moattest.LogBuffer
}

// Options tune RunBroker.
type Options struct {
	// Dir is where RunBroker writes moat.conf; default t.TempDir().
	Dir string
	// LogFormat is log_format's value ("" for text).
	LogFormat string
	// Env is the environment the broker reads (os.Getenv for the real
	// one); default empty.
	Env func(string) string
}

// RunBroker writes conf as moat.conf into o.Dir, loads it as `moat serve`
// would, starts the broker with Moat's logging pipeline at debug level
// into Logs, and closes it when the test ends. Listeners should use
// port 0 on 127.0.0.1; Addr tells where they are.
func RunBroker(t testing.TB, conf string, o Options) *Broker {
	t.Helper()
	dir := o.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return RunFile(t, path, o)
}

// RunFile is RunBroker on a configuration file already written.
func RunFile(t testing.TB, path string, o Options) *Broker {
	t.Helper()
	dir := filepath.Dir(path)
	env := o.Env
	if env == nil {
		env = func(string) string { return "" }
	}
	cfg, err := config.Load(path, env)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &moattest.LogBuffer{}
	lg, err := logging.New(logging.Options{Format: o.LogFormat, Types: map[string]bool{"all": true}, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg, Logger: lg.Logger, Env: env})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Close(ctx)
	})
	return &Broker{Broker: b, Dir: dir, Conf: path, Logs: logs}
}

// MustAddr is the address of listener id ("mqtt:127.0.0.1:0" for the first
// "listener 0 127.0.0.1"); it fails the test when there is none.
func (b *Broker) MustAddr(t testing.TB, id string) string {
	t.Helper()
	a := b.Addr(id)
	if a == nil {
		t.Fatalf("no listener %s", id)
	}
	return a.String()
}
