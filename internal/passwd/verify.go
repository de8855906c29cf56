package passwd

import (
	"container/list"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
)

// Verifier checks passwords against a File. It bounds how many hash
// computations run at once (an argon2id verification takes ~46 MiB, a $7$
// at 210000 iterations tens of milliseconds) and remembers recent successes
// so a reconnect storm does not re-run them. Safe for concurrent use.
type Verifier struct {
	sem    chan struct{}
	macKey [32]byte  // per-process; cache keys are MACs, never passwords
	nofile *hashSpec // dummy used when Verify gets a nil File

	mu    sync.Mutex
	max   int
	lru   *list.List // of cacheKey, most recent at front
	items map[cacheKey]*list.Element

	computed, dummies, hits atomic.Uint64
	running, peak           atomic.Int64
}

type cacheKey [sha256.Size]byte

// Stats counts what a Verifier has done.
type Stats struct {
	Computed  uint64 // hash computations, dummies included
	Dummies   uint64 // computations against the dummy hash (unknown users)
	CacheHits uint64 // successes answered from the cache
	Peak      int64  // most computations ever running at once
}

// NewVerifier returns a Verifier running at most maxConcurrent hash
// computations at once (GOMAXPROCS when <= 0) and caching up to cacheSize
// successful verifications (none when <= 0).
func NewVerifier(maxConcurrent, cacheSize int) *Verifier {
	if maxConcurrent <= 0 {
		maxConcurrent = runtime.GOMAXPROCS(0)
	}
	v := &Verifier{
		sem:    make(chan struct{}, maxConcurrent),
		nofile: dummyFor(defaultParams()),
		max:    max(cacheSize, 0),
		lru:    list.New(),
		items:  make(map[cacheKey]*list.Element),
	}
	rand.Read(v.macKey[:])
	return v
}

// Verify reports whether password is user's password in f. An unknown user
// (or a nil f) costs one verification against a dummy hash shaped like the
// file's entries, then fails. The error is non-nil only when ctx ends while
// waiting for a verification slot.
func (v *Verifier) Verify(ctx context.Context, f *File, user string, password []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	var e *entry
	dummy := v.nofile
	if f != nil {
		e = f.entries[user]
		if f.dummy != nil {
			dummy = f.dummy
		}
	}
	var key cacheKey
	if e != nil && v.max > 0 {
		key = v.key(user, e.hash, password)
		if v.lookup(key) {
			v.hits.Add(1)
			return true, nil
		}
	}
	select {
	case v.sem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() {
		v.running.Add(-1)
		<-v.sem
	}()
	v.computed.Add(1)
	if n := v.running.Add(1); n > v.peak.Load() {
		v.bumpPeak(n)
	}
	if e == nil {
		v.dummies.Add(1)
		dummy.verify(password)
		return false, nil
	}
	if !e.spec.verify(password) {
		return false, nil
	}
	if v.max > 0 {
		v.store(key)
	}
	return true, nil
}

// Remembered reports whether password is a recent success for user in f,
// answered from the cache without hashing (and counted as a cache hit).
// Callers that limit verifications use it to let a device reconnecting
// with a known-good password through without taking a slot.
func (v *Verifier) Remembered(f *File, user string, password []byte) bool {
	if f == nil || v.max <= 0 {
		return false
	}
	e := f.entries[user]
	if e == nil || !v.lookup(v.key(user, e.hash, password)) {
		return false
	}
	v.hits.Add(1)
	return true
}

func (v *Verifier) bumpPeak(n int64) {
	for {
		p := v.peak.Load()
		if n <= p || v.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

// Stats returns the counters so far.
func (v *Verifier) Stats() Stats {
	return Stats{Computed: v.computed.Load(), Dummies: v.dummies.Load(), CacheHits: v.hits.Load(), Peak: v.peak.Load()}
}

// key binds user, the entry's hash string and the password, so a changed
// entry or password never matches an old success.
func (v *Verifier) key(user, hash string, password []byte) cacheKey {
	m := hmac.New(sha256.New, v.macKey[:])
	var n [8]byte
	for _, b := range [][]byte{[]byte(user), []byte(hash), password} {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		m.Write(n[:])
		m.Write(b)
	}
	var k cacheKey
	m.Sum(k[:0])
	return k
}

func (v *Verifier) lookup(k cacheKey) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	el, ok := v.items[k]
	if ok {
		v.lru.MoveToFront(el)
	}
	return ok
}

func (v *Verifier) store(k cacheKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if el, ok := v.items[k]; ok {
		v.lru.MoveToFront(el)
		return
	}
	v.items[k] = v.lru.PushFront(k)
	for v.lru.Len() > v.max {
		old := v.lru.Remove(v.lru.Back()).(cacheKey)
		delete(v.items, old)
	}
}
