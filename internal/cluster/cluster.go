// Package cluster is Moat's backplane between nodes: a NATS cluster with
// JetStream. Publications accepted by a node go to NATS subjects (core NATS
// for QoS 0, a replicated JetStream stream for QoS 1/2, acknowledged before
// the MQTT client is); each node subscribes only to the subjects its local
// subscriptions match and hands what arrives to its broker; retained
// messages live in a replicated key-value bucket that every node mirrors.
// The package knows nothing of the MQTT server: the broker hands it
// messages and filters and receives messages through callbacks.
package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options configures a Backplane.
type Options struct {
	// URLs are the NATS servers (cluster_nats).
	URLs []string
	// CredsFile is a NATS credentials file (cluster_nats_credentials).
	CredsFile string
	// CAFile verifies the NATS servers; CertFile/KeyFile is the client
	// certificate.
	CAFile, CertFile, KeyFile string
	// Name is the cluster name: nodes with the same name share one MQTT
	// namespace. It must match ValidName.
	Name string
	// Node names this node; unique in the cluster.
	Node string
	// Replicas of the stream and the bucket (3 on a three-node NATS cluster).
	Replicas int
	// MaxAge bounds how long the stream keeps QoS 1/2 messages.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size.
	MaxBytes int64
	// PublishTimeout bounds the wait for a JetStream acknowledgement.
	PublishTimeout time.Duration
	// StaleAfter is how long after a node's last sign of life its claims
	// on client ids stop counting (it was killed or cut off); default 15 s.
	StaleAfter time.Duration
	// ReceiveBuffer bounds the messages received and not yet delivered;
	// beyond it NATS drops (a slow consumer) and the drop is counted.
	ReceiveBuffer int
	// Deliver receives, on one goroutine and in arrival order, every
	// message of another node that matches a local interest.
	Deliver func(*Message)
	// Retained receives every change of the cluster's retained set
	// (payload empty: cleared), on one goroutine, in the bucket's order.
	Retained func(*Message)
	// TakeOver is called when node claimed a client id; the connection
	// with that id here must go.
	TakeOver func(clientID, node string)
	Logger   *slog.Logger
}

// ErrUnavailable is returned by Publish while NATS is unreachable.
var ErrUnavailable = errors.New("cluster backplane unavailable")

// ValidName reports whether s can name a cluster (stream and bucket names
// are built from it).
func ValidName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isPlain(s[i]) && s[i] != '_' {
			return false
		}
	}
	return true
}

// Backplane is a node's connection to the cluster.
type Backplane struct {
	o    Options
	log  *slog.Logger
	subj Subjects
	nc   *nats.Conn
	qc   *nats.Conn // shared subscriptions (queue groups), with echo
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	ids  jetstream.KeyValue
	// nodes records when each node was last alive; lastAlive is this
	// node's record as found at start.
	nodes     jetstream.KeyValue
	lastAlive time.Time
	in        chan *nats.Msg

	mu       sync.Mutex
	owners   map[string]map[string]struct{} // filter -> owners (client ids)
	subjects map[string]*interest           // subject (or sharedKey) -> its subscription
	queues   map[string]string              // queue group -> its "$share/..." filter
	claims   map[string]uint64              // client id -> revision of our claim

	seq       atomic.Uint64
	downSince atomic.Int64 // Unix ns of the disconnect being recovered from
	dropped   atomic.Uint64
	received  atomic.Uint64
	published atomic.Uint64
	refused   atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type interest struct {
	filters int
	sub     *nats.Subscription
}

// Stats are counters for metrics.
type Stats struct {
	Connected                    bool
	Published, Received, Refused uint64
	// Dropped counts the times the receive buffer overflowed.
	Dropped  uint64
	Subjects int
}

// Start connects, creates the stream and the bucket if missing, and
// mirrors the retained set: it returns once every retained message that
// existed when it started was handed to Options.Retained, so a node opens
// its listeners caught up.
func Start(ctx context.Context, o Options) (*Backplane, error) {
	if !ValidName(o.Name) {
		return nil, fmt.Errorf("cluster name %q: letters, digits, '-' and '_' only", o.Name)
	}
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 24 * time.Hour
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 30
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 5 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 15 * time.Second
	}
	if o.ReceiveBuffer <= 0 {
		o.ReceiveBuffer = 65536
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backplane{
		o: o, log: log, subj: NewSubjects(o.Name),
		in:     make(chan *nats.Msg, o.ReceiveBuffer),
		owners: map[string]map[string]struct{}{}, subjects: map[string]*interest{}, claims: map[string]uint64{}, queues: map[string]string{},
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	common := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.CustomReconnectDelay(backoff),
		// Bounded: what does not fit while NATS is away is refused.
		nats.ReconnectBufSize(8 << 20),
		nats.Timeout(5 * time.Second),
	}
	if o.CredsFile != "" {
		common = append(common, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		common = append(common, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		common = append(common, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	opts := append(slices.Clone(common),
		nats.Name("moat "+o.Node),
		// A node never gets its own publications back.
		nats.NoEcho(),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.disconnected()
			log.Warn("cluster backplane disconnected", "error", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("cluster backplane reconnected", "server", nc.ConnectedUrlRedacted())
			b.reconnected()
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				// Messages arrive faster than the broker takes them:
				// NATS drops what the bounded channel cannot hold.
				b.dropped.Add(1)
				log.Warn("cluster backplane receive buffer full: messages from other nodes dropped")
				return
			}
			log.Warn("cluster backplane error", "error", err)
		}),
	)
	nc, err := nats.Connect(strings.Join(o.URLs, ","), opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS: %w", err)
	}
	b.nc = nc
	// Shared subscriptions use queue groups on a second connection that
	// does receive its own publications: the member chosen for a message
	// may be on the publishing node.
	qc, err := nats.Connect(strings.Join(o.URLs, ","), append(common, nats.Name("moat "+o.Node+" shared"))...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: connect to NATS: %w", err)
	}
	b.qc = qc
	if err := b.setup(ctx); err != nil {
		nc.Close()
		qc.Close()
		return nil, err
	}
	b.wg.Add(1)
	go b.deliverLoop()
	return b, nil
}

// backoff doubles the wait between reconnect attempts up to 5 s.
func backoff(attempts int) time.Duration {
	d := 250 * time.Millisecond << min(attempts, 5)
	return min(d, 5*time.Second)
}

func (b *Backplane) setup(ctx context.Context) error {
	js, err := jetstream.New(b.nc)
	if err != nil {
		return fmt.Errorf("cluster: jetstream: %w", err)
	}
	b.js = js
	// A NATS cluster starting with Moat may not yet place replicas:
	// retry until ctx ends.
	err = retry(ctx, func() error {
		_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        "MOAT_" + b.o.Name,
			Description: "Moat QoS 1/2 publications",
			Subjects:    []string{b.subj.Durable()},
			Replicas:    b.o.Replicas,
			Storage:     jetstream.FileStorage,
			MaxAge:      b.o.MaxAge,
			MaxBytes:    b.o.MaxBytes,
			Discard:     jetstream.DiscardOld,
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: stream MOAT_%s: %w", b.o.Name, err)
	}
	if b.kv, err = b.bucket(ctx, "retained", "Moat retained messages"); err != nil {
		return fmt.Errorf("cluster: retained bucket: %w", err)
	}
	if err := b.setupClients(ctx); err != nil {
		return err
	}
	if err := b.setupNodes(ctx); err != nil {
		return fmt.Errorf("cluster: nodes bucket: %w", err)
	}
	var w jetstream.KeyWatcher
	err = retry(ctx, func() error {
		var err error
		w, err = b.kv.WatchAll(b.ctx, jetstream.IncludeHistory())
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: watch retained: %w", err)
	}
	// Catch up: every existing value, then the nil marker.
	for caught := false; !caught; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("cluster: retained watch closed during catch-up")
			}
			if e == nil {
				caught = true
				continue
			}
			b.applyRetained(e)
		case <-ctx.Done():
			_ = w.Stop()
			return fmt.Errorf("cluster: retained catch-up: %w", ctx.Err())
		}
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() { _ = w.Stop() }()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					b.applyRetained(e)
				}
			case <-b.ctx.Done():
				return
			}
		}
	}()
	return nil
}

// bucket creates (or updates) the cluster's key-value bucket MOAT_<name>_<suffix>.
func (b *Backplane) bucket(ctx context.Context, suffix, description string) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := retry(ctx, func() error {
		var err error
		kv, err = b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      "MOAT_" + b.o.Name + "_" + suffix,
			Description: description,
			History:     1,
			Replicas:    b.o.Replicas,
			Storage:     jetstream.FileStorage,
		})
		return err
	})
	return kv, err
}

// retry calls f until it succeeds or ctx ends, waiting longer each time.
func retry(ctx context.Context, f func() error) error {
	for i := 0; ; i++ {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff(i)):
		}
	}
}

func (b *Backplane) applyRetained(e jetstream.KeyValueEntry) {
	if b.o.Retained == nil {
		return
	}
	topic, err := TopicOfKey(e.Key())
	if err != nil {
		b.log.Warn("cluster: retained key is not a topic; ignored", "key", quote(e.Key()))
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		b.o.Retained(&Message{Topic: topic, Retain: true, Payload: []byte{}})
		return
	}
	m, err := decodeMessage(topic, e.Value())
	if err != nil {
		b.log.Warn("cluster: malformed retained value; ignored", "topic", quote(topic), "error", err)
		return
	}
	b.o.Retained(m)
}

// Publish sends a local publication to the other nodes. QoS 0 goes out on
// core NATS (at most once); QoS 1/2 returns only once the JetStream stream
// holds it on its replicas, and ErrUnavailable at once while NATS is
// unreachable. A retained message (or its clearing) is also written to
// the retained bucket before Publish returns.
func (b *Backplane) Publish(ctx context.Context, m *Message) error {
	subject, err := b.subj.Topic(m.Topic, m.QoS > 0)
	if err != nil {
		b.refused.Add(1)
		return err
	}
	if !b.nc.IsConnected() {
		b.refused.Add(1)
		return ErrUnavailable
	}
	m.Node = b.o.Node
	if m.Created == 0 {
		m.Created = time.Now().Unix()
	}
	data := m.encode()
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	// The node and a sequence identify the publication: JetStream drops
	// a repeated one, and a node receiving it on two overlapping
	// subscriptions delivers it once.
	msg.Header.Set(jetstream.MsgIDHeader, b.msgID())
	ctx, cancel := context.WithTimeout(ctx, b.o.PublishTimeout)
	defer cancel()
	if m.QoS == 0 {
		err = b.nc.PublishMsg(msg)
	} else {
		_, err = b.js.PublishMsg(ctx, msg)
	}
	if err != nil {
		b.refused.Add(1)
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionReconnecting) ||
			errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return fmt.Errorf("cluster: publish: %w", err)
	}
	if m.Retain {
		key := Key(m.Topic)
		if len(m.Payload) == 0 {
			err = b.kv.Purge(ctx, key)
		} else {
			_, err = b.kv.Put(ctx, key, data)
		}
		if err != nil {
			b.refused.Add(1)
			return fmt.Errorf("cluster: retained %w", err)
		}
	}
	b.published.Add(1)
	return nil
}

func (b *Backplane) msgID() string {
	return b.o.Node + "." + fmt.Sprint(b.seq.Add(1))
}

// Subscribe records that owner (a client id) subscribes to filter; the
// node subscribes on NATS to the filter's subjects while any owner has it.
// Repeating a pair changes nothing.
func (b *Backplane) Subscribe(owner, filter string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.owners[filter]
	if set == nil {
		set = map[string]struct{}{}
		b.owners[filter] = set
	}
	if _, ok := set[owner]; ok {
		return nil
	}
	set[owner] = struct{}{}
	if len(set) > 1 {
		return nil
	}
	var errs []error
	queue := sharedQueue(filter)
	if queue != "" {
		b.queues[queue] = filter
	}
	for _, s := range b.subj.FilterSubjects(filter) {
		key := s
		if queue != "" {
			key = "q:" + queue + " " + s
		}
		it := b.subjects[key]
		if it == nil {
			var sub *nats.Subscription
			var err error
			if queue != "" {
				sub, err = b.qc.ChanQueueSubscribe(s, queue, b.in)
			} else {
				sub, err = b.nc.ChanSubscribe(s, b.in)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster: subscribe %q: %w", quote(filter), err))
				continue
			}
			it = &interest{sub: sub}
			b.subjects[key] = it
		}
		it.filters++
	}
	return errors.Join(errs...)
}

// sharedQueue names the NATS queue group of a shared subscription
// ("$share/<group>/<filter>": one group per share name and filter, as in
// MQTT), "" for other filters.
func sharedQueue(filter string) string {
	rest, ok := strings.CutPrefix(filter, "$share/")
	if !ok || !strings.Contains(rest, "/") {
		return ""
	}
	sum := sha256.Sum256([]byte(filter))
	return "moat_" + hex.EncodeToString(sum[:12])
}

// Unsubscribe removes what Subscribe recorded.
func (b *Backplane) Unsubscribe(owner, filter string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	set := b.owners[filter]
	if _, ok := set[owner]; !ok {
		return
	}
	delete(set, owner)
	if len(set) > 0 {
		return
	}
	delete(b.owners, filter)
	queue := sharedQueue(filter)
	if queue != "" {
		delete(b.queues, queue)
	}
	for _, s := range b.subj.FilterSubjects(filter) {
		key := s
		if queue != "" {
			key = "q:" + queue + " " + s
		}
		it := b.subjects[key]
		if it == nil {
			continue
		}
		if it.filters--; it.filters == 0 {
			_ = it.sub.Unsubscribe()
			delete(b.subjects, key)
		}
	}
}

// Interest returns the NATS subjects the node subscribes to (tests).
func (b *Backplane) Interest() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.subjects))
	for s := range b.subjects {
		out = append(out, s)
	}
	return out
}

// dedupWindow is how many recent publications a node remembers to deliver
// one that reached it on several overlapping subscriptions, or again in a
// replay, only once.
const dedupWindow = 1 << 16

func (b *Backplane) deliverLoop() {
	defer b.wg.Done()
	seen := make(map[string]struct{}, dedupWindow)
	ring := make([]string, dedupWindow)
	next := 0
	for {
		var msg *nats.Msg
		select {
		case msg = <-b.in:
		case <-b.ctx.Done():
			return
		}
		id := msg.Header.Get(jetstream.MsgIDHeader)
		shared := ""
		if msg.Sub != nil && msg.Sub.Queue != "" {
			// Chosen for one member of a shared subscription.
			b.mu.Lock()
			shared = b.queues[msg.Sub.Queue]
			b.mu.Unlock()
			if shared == "" {
				continue // unsubscribed meanwhile
			}
			id += " " + msg.Sub.Queue
		}
		if id != "" {
			if _, dup := seen[id]; dup {
				continue
			}
			delete(seen, ring[next])
			ring[next] = id
			seen[id] = struct{}{}
			next = (next + 1) % dedupWindow
		}
		topic, err := b.subj.TopicOf(msg.Subject)
		if err != nil {
			b.log.Warn("cluster: subject is not a topic; ignored", "subject", quote(msg.Subject))
			continue
		}
		m, err := decodeMessage(topic, msg.Data)
		if err != nil {
			b.log.Warn("cluster: malformed message; ignored", "topic", quote(topic), "error", err)
			continue
		}
		if m.Node == b.o.Node && shared == "" {
			continue // never our own, whatever the server does
		}
		m.Shared = shared
		b.received.Add(1)
		if b.o.Deliver != nil {
			b.o.Deliver(m)
		}
	}
}

// Check reports the backplane's state for /readyz.
func (b *Backplane) Check(context.Context) error {
	if st := b.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("%w: %s", ErrUnavailable, st)
	}
	return nil
}

// Stats returns the counters.
func (b *Backplane) Stats() Stats {
	b.mu.Lock()
	n := len(b.subjects)
	b.mu.Unlock()
	return Stats{
		Connected: b.nc.IsConnected(), Published: b.published.Load(), Received: b.received.Load(),
		Dropped: b.dropped.Load(), Refused: b.refused.Load(), Subjects: n,
	}
}

// Close drains nothing: QoS 1/2 publications were acknowledged by
// JetStream already, QoS 0 ones may be lost.
func (b *Backplane) Close() {
	b.cancel()
	b.nc.Close()
	b.qc.Close()
	b.wg.Wait()
}

// quote makes a string from the wire safe for a log line.
func quote(s string) string {
	const max = 200
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Sprintf("%q", s)
}
