package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/auth"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/metrics"
	"github.com/moat-mqtt/moat/internal/store"
)

// OfflineStore is the broker's store opened for a tool while no broker
// serves it (moat import): mounted, verified and opened by the same code
// as Start, with no listener.
type OfflineStore struct {
	b *Broker
}

// OpenStore opens the store the configuration names exactly as Start
// does. A broker running on the same store makes it fail: the store file
// is locked (store.ErrInUse) or the mount point is served by its gocryptfs.
func OpenStore(o Options) (*OfflineStore, error) {
	cfg := o.Config
	if !cfg.Persistence.Enabled {
		return nil, errors.New("persistence is off in this configuration, so there is no store (set persistence true)")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	env := o.Env
	if env == nil {
		env = func(string) string { return "" }
	}
	b := &Broker{cfg: cfg, log: log, env: env}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	var err error
	if b.met, err = metrics.New(metrics.NewRegistry()); err != nil {
		b.cancel()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	// A server that never serves: Restore needs one to load into.
	b.srv = mqtt.New(&mqtt.Options{Capabilities: capabilities(cfg), Logger: slog.New(slog.DiscardHandler)})
	b.expiry = &retainedExpiry{srv: b.srv}
	if err := b.startPersistence(); err != nil {
		b.cancel()
		return nil, err
	}
	return &OfflineStore{b: b}, nil
}

// Store is the open store.
func (s *OfflineStore) Store() *store.Store {
	p := s.b.persist
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.store
}

// Retained is how many retained messages the store held when opened.
func (s *OfflineStore) Retained() int { return s.b.srv.Topics.Retained.Len() }

// Close flushes and closes the store and unmounts it.
func (s *OfflineStore) Close() error {
	s.b.cancel()
	err := s.b.persist.close()
	return errors.Join(err, s.b.run.wait(context.Background()))
}

// UnreadableTopics returns, sorted, the topics that no client could read
// under the configuration's password and ACL files: no user of a password
// file (taking the username as client id, for %c patterns) and no
// anonymous client where a listener allows them.
func UnreadableTopics(cfg *config.Config, topics []string) ([]string, error) {
	policy, _, err := LoadPolicy(cfg)
	if err != nil {
		return nil, err
	}
	seen := map[*auth.Scope]bool{}
	var scopes []*auth.Scope
	for _, sc := range policy.Scopes {
		if !seen[sc] {
			seen[sc] = true
			scopes = append(scopes, sc)
		}
	}
	var out []string
	for _, t := range topics {
		if !readableByAnyone(scopes, t) {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out, nil
}

func readableByAnyone(scopes []*auth.Scope, topic string) bool {
	for _, sc := range scopes {
		var clients []acl.Client
		if sc.AllowAnonymous {
			clients = append(clients, acl.Client{})
		}
		if sc.Passwd != nil {
			for _, u := range sc.Passwd.Users() {
				clients = append(clients, acl.Client{Username: u, HasUsername: true, ClientID: u})
			}
		}
		for i := range clients {
			if sc.CanRead(&clients[i], topic) {
				return true
			}
		}
	}
	return false
}
