package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Client ids are unique across the cluster: a node records each client id
// it serves in the cluster's clients bucket (with its node and username)
// and announces the claim; the node that served the id before disconnects
// its connection.

// Owner is who holds a client id in the cluster.
type Owner struct{ Node, User string }

func (b *Backplane) takeoverSubject() string { return b.subj.prefix + "takeover" }

func (b *Backplane) setupClients(ctx context.Context) error {
	var err error
	b.ids, err = b.bucket(ctx, "clients", "Moat client ids in use, by node")
	if err != nil {
		return fmt.Errorf("cluster: clients bucket: %w", err)
	}
	_, err = b.nc.Subscribe(b.takeoverSubject(), b.onTakeover)
	if err != nil {
		return fmt.Errorf("cluster: takeover subscription: %w", err)
	}
	return nil
}

// onTakeover handles another node's claim. A notice can arrive after this
// node claimed the id again (a client moving back and forth): only the
// latest claim in the bucket counts.
func (b *Backplane) onTakeover(msg *nats.Msg) {
	node := msg.Header.Get("Moat-Node")
	rev, err := strconv.ParseUint(msg.Header.Get("Moat-Rev"), 10, 64)
	if node == b.o.Node || err != nil || b.o.TakeOver == nil {
		return
	}
	id := string(msg.Data)
	b.mu.Lock()
	mine, ok := b.claims[id]
	b.mu.Unlock()
	if ok && mine > rev {
		return
	}
	if o, ok, err := b.Owner(b.ctx, id); err == nil && ok && o.Node == b.o.Node {
		return
	}
	b.o.TakeOver(id, node)
}

// Owner returns the node and user holding clientID, if any.
func (b *Backplane) Owner(ctx context.Context, clientID string) (Owner, bool, error) {
	if !b.nc.IsConnected() {
		// Never hold a CONNECT up while NATS is away.
		return Owner{}, false, ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.PublishTimeout)
	defer cancel()
	e, err := b.ids.Get(ctx, Key(clientID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, fmt.Errorf("cluster: client id owner: %w", err)
	}
	node, user, ok := strings.Cut(string(e.Value()), "\x00")
	if !ok {
		return Owner{}, false, nil
	}
	if node != b.o.Node && !b.nodeAlive(ctx, node) {
		// Its node stopped without giving it back.
		return Owner{}, false, nil
	}
	return Owner{Node: node, User: user}, true, nil
}

// nodeAlive reports whether node showed a sign of life within StaleAfter.
func (b *Backplane) nodeAlive(ctx context.Context, node string) bool {
	e, err := b.nodes.Get(ctx, Key(node))
	if err != nil {
		return !errors.Is(err, jetstream.ErrKeyNotFound) // unsure: assume alive
	}
	ns, err := strconv.ParseInt(string(e.Value()), 10, 64)
	return err == nil && time.Since(time.Unix(0, ns)) < b.o.StaleAfter
}

// Claim records that this node now serves clientID for user and tells the
// other nodes, which disconnect their connection with that id.
func (b *Backplane) Claim(ctx context.Context, clientID, user string) error {
	if !b.nc.IsConnected() {
		return ErrUnavailable
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.PublishTimeout)
	defer cancel()
	rev, err := b.ids.Put(ctx, Key(clientID), []byte(b.o.Node+"\x00"+user))
	if err != nil {
		return fmt.Errorf("cluster: claim client id: %w", err)
	}
	b.mu.Lock()
	b.claims[clientID] = rev
	b.mu.Unlock()
	msg := &nats.Msg{Subject: b.takeoverSubject(), Data: []byte(clientID), Header: nats.Header{}}
	msg.Header.Set("Moat-Node", b.o.Node)
	msg.Header.Set("Moat-Rev", strconv.FormatUint(rev, 10))
	if err := b.nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("cluster: announce client id: %w", err)
	}
	return nil
}

// Release removes this node's claim on clientID, unless another node (or
// a later connection here) claimed it since.
func (b *Backplane) Release(ctx context.Context, clientID string) {
	b.mu.Lock()
	rev, ok := b.claims[clientID]
	delete(b.claims, clientID)
	b.mu.Unlock()
	if !ok || !b.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.PublishTimeout)
	defer cancel()
	_ = b.ids.Delete(ctx, Key(clientID), jetstream.LastRevision(rev))
}
