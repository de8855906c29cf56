// Package store keeps retained messages and persistent MQTT sessions durable
// for the broker, in one bbolt file opened through a directory handle (the
// verified encrypted mount), so a vanished mount fails closed instead of
// writing plaintext elsewhere.
//
// Every change goes through one committer goroutine (group commit): it takes
// everything queued since its last commit, writes one transaction, fsyncs
// once and then releases all waiters together.
//
// What is durable when:
//   - QoS 1/2 retained publish (and its deletion by an empty payload): on disk
//     before the PUBACK/PUBREC is written. If the write fails, the message is
//     not acknowledged: the client's connection is closed (MQTT 5 clients get
//     a 0x80 ack first), the store turns unhealthy, and later retained
//     publishes are refused.
//   - QoS 0 retained publish, retained expiry, and every session record
//     (client, Will, subscriptions, queued and in-flight QoS 1/2 messages):
//     on disk within Options.QoS0Flush, or sooner when a QoS 1/2 retained
//     commit happens meanwhile. Acknowledging an inbound non-retained QoS 1/2
//     message does not wait for the session records it causes.
package store

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultQoS0Flush bounds how long a change nobody waits for (QoS 0
// retained, session records) may stay in memory before it is committed.
const DefaultQoS0Flush = 100 * time.Millisecond

// ErrClosed is returned for writes after Close.
var ErrClosed = errors.New("store closed")

// ErrRecordTooLarge is the error of one record the store cannot hold (a
// key over bbolt's 32 KiB, a value over its 2 GiB). It is that record's
// failure only: the store stays healthy and keeps every other write.
var ErrRecordTooLarge = errors.New("record too large for the store")

// checkRecord reports why bbolt would refuse key/val, which would
// otherwise fail the whole commit and every write batched with it.
func checkRecord(key, val []byte) error {
	switch {
	case len(key) == 0:
		return fmt.Errorf("empty key: %w", ErrRecordTooLarge)
	case len(key) > bolt.MaxKeySize:
		return fmt.Errorf("key of %d bytes (limit %d): %w", len(key), bolt.MaxKeySize, ErrRecordTooLarge)
	case len(val) > bolt.MaxValueSize:
		return fmt.Errorf("value of %d bytes (limit %d): %w", len(val), bolt.MaxValueSize, ErrRecordTooLarge)
	}
	return nil
}

var (
	bucketMeta     = []byte("meta")
	bucketRetained = []byte("retained")
	bucketClients  = []byte("clients")
	bucketSubs     = []byte("subs")
	bucketInflight = []byte("inflight")
	keySchema      = []byte("schema")
	dataBuckets    = [][]byte{bucketRetained, bucketClients, bucketSubs, bucketInflight, bucketPending}
)

// Options configures Open.
type Options struct {
	// Root is the directory the database lives in (the verified encrypted
	// mount). The store never opens anything by plain path.
	Root *os.Root
	// File is the database file name inside Root; default "moat.db".
	File string
	// QoS0Flush bounds how long unwaited changes (QoS 0 retained, session
	// records) are held to share a commit; default DefaultQoS0Flush,
	// capped at 1s.
	QoS0Flush time.Duration
	Logger    *slog.Logger
	// OnCommit, if set, is told how long each commit (write and fsync) took.
	OnCommit func(time.Duration)

	// beforeCommit lets tests make a commit fail as a disk error would.
	beforeCommit func() error
}

// Stats reports what Restore loaded.
type Stats struct {
	Retained      int           // retained messages restored
	Expired       int           // retained messages dropped: their own v5 expiry had passed
	Clients       int           // persistent sessions restored
	Subscriptions int           // their subscriptions
	Inflight      int           // their queued and in-flight QoS 1/2 messages
	Pending       int           // messages queued from pending records a crash left
	Orphans       int           // session records without a client record, skipped
	Duration      time.Duration // from the start of Restore to its end
}

type opKind uint8

const (
	opRetained  opKind = iota // key topic; value read from memory (nil pk = delete)
	opPut                     // bucket/key = val
	opDel                     // bucket/key
	opDelClient               // key client id: record, subscriptions, in-flight
	opWipe                    // every data bucket emptied
)

type op struct {
	kind   opKind
	bucket []byte
	key    []byte
	val    []byte
	pk     *packets.Packet
}

type batch struct {
	ops     []op
	waiters int
	first   time.Time
	done    chan struct{}
	err     error
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// Store is a durable home for retained messages and persistent sessions.
type Store struct {
	db           *bolt.DB
	file         string
	log          *slog.Logger
	flush        time.Duration
	beforeCommit func() error
	onCommit     func(time.Duration)
	srv          atomic.Pointer[mqtt.Server]
	failed       atomic.Pointer[error]

	mu        sync.Mutex // orders enqueues: a value is read and queued in one step
	cur       *batch
	closed    bool
	persisted map[string]struct{} // client ids with a stored session
	fan       map[string]*fanout  // publishes between pending record and fan-out end, by publisher id
	held      map[string]*fanout  // their held-back in-flight records, by key
	seq       atomic.Uint64       // last pending record key
	active    atomic.Int32        // len(fan), read without the lock

	kick   chan struct{}
	urgent chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

// Open opens (or creates) the database inside o.Root and starts the
// committer. A damaged file or an unknown schema version is an error naming
// what is wrong; nothing is silently dropped.
func Open(o Options) (*Store, error) {
	if o.Root == nil {
		return nil, errors.New("store: no directory handle (Options.Root)")
	}
	if o.File == "" {
		o.File = "moat.db"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.QoS0Flush <= 0:
		o.QoS0Flush = DefaultQoS0Flush
	case o.QoS0Flush > time.Second:
		o.QoS0Flush = time.Second
	}
	root := o.Root
	db, err := bolt.Open(o.File, 0o600, &bolt.Options{
		Timeout:        2 * time.Second, // another process holds the lock
		NoFreelistSync: true,            // one write less per commit; rebuilt by a scan on open
		FreelistType:   bolt.FreelistMapType,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return root.OpenFile(name, flag, perm)
		},
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("store %s: open: %w", o.File, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("store %s: open: %w", o.File, err)
	}
	s := &Store{
		db:           db,
		file:         o.File,
		log:          o.Logger,
		flush:        o.QoS0Flush,
		beforeCommit: o.beforeCommit,
		onCommit:     o.OnCommit,
		cur:          newBatch(),
		persisted:    map[string]struct{}{},
		fan:          map[string]*fanout{},
		held:         map[string]*fanout{},
		kick:         make(chan struct{}, 1),
		urgent:       make(chan struct{}, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	if err := s.initSchema(); err != nil {
		db.Close()
		return nil, err
	}
	go s.run()
	return s, nil
}

func (s *Store) initSchema() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			for _, name := range dataBuckets {
				if tx.Bucket(name) != nil {
					return fmt.Errorf("bucket %q present but schema record missing", name)
				}
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			e := encoder{}
			e.uv(schemaVersion)
			if err := meta.Put(keySchema, e.b); err != nil {
				return err
			}
			for _, name := range dataBuckets {
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			return nil
		}
		d := decoder{b: meta.Get(keySchema)}
		if d.b == nil {
			return errors.New("schema record missing")
		}
		v := d.uv()
		if err := d.end(); err != nil {
			return fmt.Errorf("schema record: %w", err)
		}
		if v != schemaVersion {
			return fmt.Errorf("unsupported schema version %d (this build reads %d)", v, schemaVersion)
		}
		for _, name := range dataBuckets {
			if tx.Bucket(name) != nil {
				continue
			}
			if bytes.Equal(name, bucketPending) {
				// Files from before pending records: nothing was pending.
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("bucket %q missing", name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %s: %w", s.file, err)
	}
	return nil
}

// Close commits whatever is queued, stops the committer and closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	var errs []error
	if p := s.failed.Load(); p != nil {
		errs = append(errs, *p)
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store %s: close: %w", s.file, err))
	}
	return errors.Join(errs...)
}

// Healthy is nil while every commit has succeeded; otherwise it is the write
// error after which the store refuses further writes.
func (s *Store) Healthy() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Store) markFailed(err error) {
	if s.failed.CompareAndSwap(nil, &err) {
		s.log.Error("store write failed; refusing further writes", "file", s.file, "err", err)
	}
}

// enqueueLocked adds ops to the open batch; s.mu must be held.
func (s *Store) enqueueLocked(wait bool, ops ...op) *batch {
	if s.closed {
		b := &batch{done: make(chan struct{}), err: ErrClosed}
		close(b.done)
		return b
	}
	b := s.cur
	if len(b.ops) == 0 {
		b.first = time.Now()
	}
	b.ops = append(b.ops, ops...)
	select {
	case s.kick <- struct{}{}:
	default:
	}
	if wait {
		b.waiters++
		select {
		case s.urgent <- struct{}{}:
		default:
		}
	}
	return b
}

func (s *Store) enqueue(ops ...op) {
	s.mu.Lock()
	s.enqueueLocked(false, ops...)
	s.mu.Unlock()
}

func (s *Store) run() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			s.commitOpen()
			return
		}
		s.mu.Lock()
		n, waiters, first := len(s.cur.ops), s.cur.waiters, s.cur.first
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		if waiters == 0 {
			// Nobody waits: hold the batch up to the flush bound so a QoS 0
			// or session burst shares one fsync.
			t := time.NewTimer(time.Until(first.Add(s.flush)))
			select {
			case <-t.C:
			case <-s.urgent:
			case <-s.stop:
			}
			t.Stop()
		}
		s.commitOpen()
	}
}

func (s *Store) commitOpen() {
	s.mu.Lock()
	b := s.cur
	s.cur = newBatch()
	s.mu.Unlock()
	if len(b.ops) > 0 {
		start := time.Now()
		b.err = s.commit(b.ops)
		if b.err == nil && s.onCommit != nil {
			s.onCommit(time.Since(start))
		}
	}
	close(b.done)
}

func (s *Store) commit(ops []op) error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	if s.beforeCommit != nil {
		if err := s.beforeCommit(); err != nil {
			err = fmt.Errorf("store %s: commit: %w", s.file, err)
			s.markFailed(err)
			return err
		}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		ret, subs, infl, cls := tx.Bucket(bucketRetained), tx.Bucket(bucketSubs), tx.Bucket(bucketInflight), tx.Bucket(bucketClients)
		for _, o := range ops {
			var err error
			switch o.kind {
			case opRetained:
				if o.pk == nil {
					err = ret.Delete(o.key)
				} else if v := appendMessage(nil, o.pk); s.recordFits(o.key, v) {
					err = ret.Put(o.key, v)
				}
			case opPut:
				if s.recordFits(o.key, o.val) {
					err = tx.Bucket(o.bucket).Put(o.key, o.val)
				}
			case opDel:
				err = tx.Bucket(o.bucket).Delete(o.key)
			case opWipe:
				for _, name := range dataBuckets {
					if err = tx.DeleteBucket(name); err == nil {
						_, err = tx.CreateBucket(name)
					}
					if err != nil {
						break
					}
				}
				ret, subs, infl, cls = tx.Bucket(bucketRetained), tx.Bucket(bucketSubs), tx.Bucket(bucketInflight), tx.Bucket(bucketClients)
			case opDelClient:
				if err = cls.Delete(o.key); err == nil {
					prefix := clientPrefix(string(o.key))
					if err = deletePrefix(subs, prefix); err == nil {
						err = deletePrefix(infl, prefix)
					}
				}
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("store %s: commit: %w", s.file, err)
		s.markFailed(err)
	}
	return err
}

// recordFits drops, with an error log, a record bbolt would refuse: one
// oversized record must not fail the commit for every other client.
func (s *Store) recordFits(key, val []byte) bool {
	if err := checkRecord(key, val); err != nil {
		s.log.Error("store record dropped", "key", describeKey(key), "err", err)
		return false
	}
	return true
}

func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// saveRetained queues the current in-memory value of topic (not the racing
// publish that triggered the call), so memory and disk see the same order.
// With wait it returns once that value is on disk.
func (s *Store) saveRetained(topic string, fallback *packets.Packet, wait bool) error {
	b := s.queueRetained(topic, fallback, wait)
	if !wait {
		return nil
	}
	<-b.done
	return b.err
}

// queueRetained queues the value as saveRetained does and returns its
// batch; urgent commits it without the flush delay. A topic the store
// cannot hold as a key fails only its own batch.
func (s *Store) queueRetained(topic string, fallback *packets.Packet, urgent bool) *batch {
	if err := checkRecord([]byte(topic), nil); err != nil {
		b := newBatch()
		b.err = fmt.Errorf("retained message: %w", err)
		close(b.done)
		return b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var val *packets.Packet
	if srv := s.srv.Load(); srv != nil {
		if pk, ok := srv.Topics.Retained.Get(topic); ok && len(pk.Payload) > 0 {
			val = &pk
		}
	} else if fallback != nil && len(fallback.Payload) > 0 {
		pk := fallback.Copy(false)
		val = &pk
	}
	return s.enqueueLocked(urgent, op{kind: opRetained, key: []byte(topic), pk: val})
}
