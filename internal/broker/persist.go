package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moat-mqtt/moat/internal/cryptfs"
	"github.com/moat-mqtt/moat/internal/store"
)

// persistence is the store and, when encrypted, the gocryptfs mount under it.
type persistence struct {
	b     *Broker
	mount *cryptfs.Mount // nil with persistence_encryption off
	root  *os.Root
	// lost is set from the mount's death until the store is open again on
	// the new mount: the old store's files stay on the dead one.
	lost atomic.Bool

	mu    sync.Mutex
	store *store.Store
	hook  *store.Hook // registered once; switched to a re-opened store
}

// startPersistence mounts the encrypted directory, opens the store only
// through the verified mount, and restores it into mochi before any
// listener opens.
func (b *Broker) startPersistence() error {
	ps := b.cfg.Persistence
	if !ps.Enabled {
		return nil
	}
	p := &persistence{b: b}
	if ps.Encrypted() {
		bin, err := cryptfs.Find(ps.GocryptfsPath)
		if err != nil {
			return fmt.Errorf("persistence (%s): %w", ps.Pos, err)
		}
		m, err := cryptfs.Start(b.ctx, cryptfs.Options{
			Binary:     bin,
			CipherDir:  ps.CipherDir,
			MountPoint: ps.Location,
			KeyFile:    ps.KeyFile,
			ScryptN:    scryptN(b.env),
			Logger:     b.log.With("component", "gocryptfs"),
		})
		if err != nil {
			return fmt.Errorf("persistence (%s): %w", ps.Pos, err)
		}
		p.mount, p.root = m, m.Root()
		b.met.MountState(true)
	} else {
		if err := os.MkdirAll(ps.Location, 0o700); err != nil {
			return fmt.Errorf("persistence_location: %w", err)
		}
		r, err := os.OpenRoot(ps.Location)
		if err != nil {
			return fmt.Errorf("persistence_location: %w", err)
		}
		p.root = r
	}
	if err := p.open(); err != nil {
		p.close()
		return err
	}
	b.persist = p
	if p.mount != nil {
		b.run.goNamed("persistence supervisor", func() { p.supervise(b.ctx) })
	}
	return nil
}

// scryptN lets tests make volume creation cheap; production keeps
// gocryptfs's default cost.
func scryptN(env func(string) string) int {
	if env("MOAT_TEST_SCRYPTN") == "10" {
		return 10
	}
	return 0
}

func (p *persistence) open() error {
	b := p.b
	st, err := store.Open(store.Options{
		Root:     p.root,
		File:     b.cfg.Persistence.File,
		Logger:   b.log.With("component", "store"),
		OnCommit: b.met.StoreCommit,
	})
	if err != nil {
		return fmt.Errorf("persistence: %w", err)
	}
	stats, err := st.Restore(b.srv)
	if err != nil {
		st.Close()
		return fmt.Errorf("persistence: restore: %w", err)
	}
	hook := st.Hook()
	if err := b.srv.AddHook(hook, nil); err != nil {
		st.Close()
		return fmt.Errorf("persistence: %w", err)
	}
	b.expiry.onExpired = hook.OnRetainedExpired
	// Restored sessions meet the files in force: those of removed users
	// go, and so do queued messages their owner may no longer read.
	if b.auth != nil { // nil for a tool's offline store (moat import)
		b.auth.SetSessionStore(hook)
		b.auth.PruneSessions()
	}
	p.mu.Lock()
	p.store, p.hook = st, hook
	p.mu.Unlock()
	b.log.Info("store restored", "retained", stats.Retained, "sessions", stats.Clients,
		"subscriptions", stats.Subscriptions, "inflight", stats.Inflight, "expired", stats.Expired, "took", stats.Duration)
	return nil
}

// supervise watches the mount. When gocryptfs dies, the store's open
// files fail from then on, so nothing is acknowledged; supervise remounts,
// opens the store again on the new mount, writes mochi's state into it
// (what was refused meanwhile was never acknowledged; everything else is
// in memory) and makes Moat ready again, without a restart.
func (p *persistence) supervise(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.mount.Dead():
		}
		p.lost.Store(true)
		p.b.met.MountState(false)
		p.b.log.Error("encrypted persistence mount died: retained and queued writes are refused until it is back")
		for delay := time.Second; ; delay = min(delay*2, time.Minute) {
			err := p.mount.Remount(ctx)
			if err == nil {
				err = p.reopen()
			}
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			p.b.log.Error("persistence not back yet", "error", err, "retry_in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		p.lost.Store(false)
		p.b.met.MountState(true)
		p.b.log.Warn("encrypted persistence remounted and the store re-opened; persistence resumed")
	}
}

// reopen opens the store on the remounted volume and hands it the
// broker's current state; the old store, on the dead mount, is closed.
func (p *persistence) reopen() error {
	b := p.b
	st, err := store.Open(store.Options{
		Root:     p.mount.Root(),
		File:     b.cfg.Persistence.File,
		Logger:   b.log.With("component", "store"),
		OnCommit: b.met.StoreCommit,
	})
	if err != nil {
		return fmt.Errorf("re-open store: %w", err)
	}
	p.mu.Lock()
	old, hook := p.store, p.hook
	p.mu.Unlock()
	hook.Switch(st)
	if _, err := st.Adopt(b.srv); err != nil {
		hook.Switch(old)
		st.Close()
		return fmt.Errorf("rewrite store: %w", err)
	}
	p.mu.Lock()
	p.store = st
	p.mu.Unlock()
	if err := old.Close(); err != nil {
		b.log.Debug("closing the store on the dead mount", "error", err)
	}
	return nil
}

func (p *persistence) check(context.Context) error {
	p.mu.Lock()
	st := p.store
	p.mu.Unlock()
	if st == nil {
		return errors.New("store not open")
	}
	if err := st.Healthy(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if p.lost.Load() {
		return errors.New("store: the encrypted mount died; remounting and re-opening the store")
	}
	if p.mount != nil {
		if err := p.mount.Check(); err != nil {
			return fmt.Errorf("mount: %w", err)
		}
	}
	return nil
}

// close flushes and closes the store, then unmounts.
func (p *persistence) close() error {
	var errs []error
	p.mu.Lock()
	if p.store != nil {
		errs = append(errs, p.store.Close())
		p.store = nil
	}
	p.mu.Unlock()
	if p.mount != nil {
		errs = append(errs, p.mount.Close())
	} else if p.root != nil {
		p.root.Close()
	}
	return errors.Join(errs...)
}
