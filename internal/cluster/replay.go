package cluster

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Core NATS delivers at most once: while this node's connection is down
// (a NATS node lost, a network cut), QoS 1/2 messages published on other
// nodes reach the stream but not this node. When the connection is back
// the node re-reads the stream from shortly before it went down and
// delivers what its interest matches; the copies it already had are
// recognised by their message id.

// replayMargin starts a replay this long before the disconnect was seen:
// the connection may have been dead for a while before the client noticed.
const replayMargin = 5 * time.Second

// replaySettle is how long a replay waits before it takes the stream's
// end as its own: the node's subscriptions take a moment to reach the
// other NATS servers again, and what is published meanwhile is missed by
// core NATS too.
const replaySettle = 2 * time.Second

// replayTimeout bounds one replay.
const replayTimeout = 2 * time.Minute

func (b *Backplane) disconnected() {
	b.downSince.CompareAndSwap(0, time.Now().UnixNano())
}

func (b *Backplane) reconnected() {
	since := b.downSince.Swap(0)
	if since == 0 {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		n, err := b.replay(time.Unix(0, since).Add(-replayMargin))
		if err != nil {
			b.log.Warn("cluster: replay after reconnecting incomplete", "replayed", n, "error", err)
			return
		}
		b.log.Info("cluster: replayed QoS 1/2 messages missed while disconnected", "replayed", n)
	}()
}

// replay re-reads the stream from since up to its last message at the
// time of the call, handing what matches the node's interest to the
// delivery loop. The stream may be electing a leader after the loss of a
// NATS node: a failed step is retried from where it stopped.
func (b *Backplane) replay(since time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(b.ctx, replayTimeout)
	defer cancel()
	select {
	case <-time.After(replaySettle):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	var (
		last, next uint64 // the stream's end to reach; the next sequence to read (0: by time)
		n          int
	)
	err := retry(ctx, func() error {
		st, err := b.js.Stream(ctx, "MOAT_"+b.o.Name)
		if err != nil {
			return err
		}
		if last == 0 {
			info, err := st.Info(ctx)
			if err != nil {
				return err
			}
			if info.State.Msgs == 0 {
				return nil
			}
			last = info.State.LastSeq
		}
		// nats.go would otherwise recreate a lost ordered consumer forever,
		// deaf to ctx and to Close; this loop retries instead.
		cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{b.subj.Durable()}, MaxResetAttempts: 3}
		if next == 0 {
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
		} else {
			cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, next
		}
		cons, err := st.OrderedConsumer(ctx, cfg)
		if err != nil {
			return err
		}
		for {
			msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
				return nil // nothing newer
			}
			if err != nil {
				return err
			}
			meta, err := msg.Metadata()
			if err != nil {
				return err
			}
			if b.interested(msg.Subject()) {
				m := &nats.Msg{Subject: msg.Subject(), Data: msg.Data(), Header: msg.Headers()}
				select {
				case b.in <- m:
					n++
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			next = meta.Sequence.Stream + 1
			if meta.Sequence.Stream >= last {
				return nil
			}
		}
	})
	return n, err
}

// interested reports whether a subject matches one the node subscribes to.
func (b *Backplane) interested(subject string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for f := range b.subjects {
		if !strings.HasPrefix(f, "q:") && subjectMatches(f, subject) {
			return true
		}
	}
	return false
}

// subjectMatches is NATS's matching of a literal subject by a filter.
func subjectMatches(filter, subject string) bool {
	for {
		ft, frest, fmore := strings.Cut(filter, ".")
		st, srest, smore := strings.Cut(subject, ".")
		switch {
		case ft == ">":
			return true
		case ft != "*" && ft != st:
			return false
		case !fmore || !smore:
			return !fmore && !smore
		}
		filter, subject = frest, srest
	}
}

// A node that was down also missed what was published meanwhile: it
// records that it is alive in the cluster's nodes bucket every second,
// and at start replays the stream from shortly before its last record
// (CatchUp), for the sessions restored from its store.

const aliveEvery = time.Second

func (b *Backplane) setupNodes(ctx context.Context) error {
	var err error
	b.nodes, err = b.bucket(ctx, "nodes", "Moat nodes: when each was last alive")
	if err != nil {
		return err
	}
	key := Key(b.o.Node)
	// A bucket just created may have no leader yet ("no responders"):
	// retry like its creation.
	err = retry(ctx, func() error {
		e, err := b.nodes.Get(ctx, key)
		switch {
		case err == nil:
			if ns, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
				b.lastAlive = time.Unix(0, ns)
			}
			return nil
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	b.alive(ctx)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		t := time.NewTicker(aliveEvery)
		defer t.Stop()
		for {
			select {
			case <-b.ctx.Done():
				return
			case <-t.C:
				b.alive(b.ctx)
			}
		}
	}()
	return nil
}

func (b *Backplane) alive(ctx context.Context) {
	if !b.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.PublishTimeout)
	defer cancel()
	_, _ = b.nodes.Put(ctx, Key(b.o.Node), []byte(strconv.FormatInt(time.Now().UnixNano(), 10)))
}

// CatchUp replays what the stream holds from shortly before this node was
// last alive, for its current interest; call it once the restored
// sessions' subscriptions are declared. A node never seen before has
// nothing to catch up.
func (b *Backplane) CatchUp() (int, error) {
	if b.lastAlive.IsZero() {
		return 0, nil
	}
	return b.replay(b.lastAlive.Add(-replayMargin))
}
