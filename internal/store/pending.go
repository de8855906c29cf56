package store

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

// A QoS 1/2 PUBLISH that persistent sessions subscribe to is acknowledged
// by mochi before it fans the message out, and the fan-out is what creates
// the sessions' queued records. So the store first writes one pending
// record — the message and the sessions it is meant for — and the
// publisher's ack waits for it; after the fan-out, the sessions' records
// and the deletion of the pending record are committed together. A crash
// in between restores the message from the pending record.
//
// Between the two steps the fan-out's records are held back (fanout.ops),
// so that an ack or a PUBREC of a subscriber that is faster than the
// publisher's fan-out edits the held-back record instead of being
// overtaken by it.

var bucketPending = []byte("pending")

// fanout is one publish between its pending record and its fan-out's end.
type fanout struct {
	cl   *mqtt.Client // the publisher
	key  []byte       // pending record key
	ops  []op         // the fan-out's in-flight records, held back
	keys map[string]int
}

// pendingTarget is a session (or, for a shared subscription, any one of
// several sessions) a pending message is meant for.
type pendingTarget []pendingSub

type pendingSub struct {
	id  string
	qos byte
	rap bool // retain as published
	ids []int
}

const maxPendingTargets = 1 << 20

func appendPending(b []byte, pk *packets.Packet, targets []pendingTarget) []byte {
	e := encoder{b: b}
	e.bytes(appendMessage(nil, pk))
	e.uv(uint64(len(targets)))
	for _, t := range targets {
		e.uv(uint64(len(t)))
		for _, s := range t {
			e.str(s.id)
			f := s.qos
			if s.rap {
				f |= 4
			}
			e.u8(f)
			e.uv(uint64(len(s.ids)))
			for _, id := range s.ids {
				e.uv(uint64(id))
			}
		}
	}
	return e.b
}

func decodePending(b []byte) (packets.Packet, []pendingTarget, error) {
	d := decoder{b: b}
	raw := d.bytes()
	n := d.count(1)
	var targets []pendingTarget
	for i := 0; i < n && d.err == nil; i++ {
		m := d.count(3)
		t := make(pendingTarget, 0, m)
		for j := 0; j < m && d.err == nil; j++ {
			s := pendingSub{id: d.str()}
			f := d.u8()
			s.qos, s.rap = f&3, f&4 != 0
			if f&^7 != 0 || s.qos > 2 {
				d.fail(errFlags)
			}
			for k, c := 0, d.count(1); k < c && d.err == nil; k++ {
				s.ids = append(s.ids, int(d.uvMax(maxSubID)))
			}
			t = append(t, s)
		}
		targets = append(targets, t)
	}
	if err := d.end(); err != nil {
		return packets.Packet{}, nil, err
	}
	pk, err := decodeMessage(raw)
	if err != nil {
		return packets.Packet{}, nil, err
	}
	return pk, targets, nil
}

// pendingTargets lists the stored sessions a QoS 1/2 publish from origin
// will be queued for, as mochi's fan-out decides: QoS downgraded to the
// subscription's, no-local honoured, one member of each shared group.
func (s *Store) pendingTargets(srv *mqtt.Server, pk *packets.Packet, origin string) []pendingTarget {
	s.mu.Lock()
	none := len(s.persisted) == 0
	s.mu.Unlock()
	if none {
		return nil
	}
	subs := srv.Topics.Subscribers(pk.TopicName)
	var out []pendingTarget
	add := func(t pendingTarget, id string, sub packets.Subscription) pendingTarget {
		if sub.NoLocal && id == origin {
			return t
		}
		q := min(pk.FixedHeader.Qos, sub.Qos, srv.Options.Capabilities.MaximumQos)
		if q == 0 || !s.hasSession(id) {
			return t
		}
		ids := make([]int, 0, len(sub.Identifiers))
		for _, v := range sub.Identifiers {
			ids = append(ids, v)
		}
		return append(t, pendingSub{id: id, qos: q, rap: sub.RetainAsPublished, ids: ids})
	}
	for id, sub := range subs.Subscriptions {
		if t := add(nil, id, sub); len(t) > 0 {
			out = append(out, t)
		}
	}
	for _, group := range subs.Shared {
		var t pendingTarget
		for id, sub := range group {
			t = add(t, id, sub)
		}
		if len(t) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// beginFanout queues the pending record of pk, urgently, and returns its
// batch: the caller acknowledges pk only once the batch is on disk.
func (s *Store) beginFanout(cl *mqtt.Client, pk *packets.Packet, targets []pendingTarget) *batch {
	key := binary.BigEndian.AppendUint64(nil, s.seq.Add(1))
	val := appendPending(nil, pk, targets)
	f := &fanout{cl: cl, key: key, keys: map[string]int{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.fan[cl.ID]; old != nil {
		s.endFanoutLocked(old)
	}
	s.fan[cl.ID] = f
	s.active.Add(1)
	return s.enqueueLocked(true, op{kind: opPut, bucket: bucketPending, key: key, val: val})
}

// endFanout commits the fan-out's records and drops the pending record,
// in one transaction.
func (s *Store) endFanout(cl *mqtt.Client) {
	if s.active.Load() == 0 {
		return // the common case costs no lock
	}
	s.mu.Lock()
	if f := s.fan[cl.ID]; f != nil && f.cl == cl {
		s.endFanoutLocked(f)
	}
	s.mu.Unlock()
}

func (s *Store) endFanoutLocked(f *fanout) {
	if s.fan[f.cl.ID] == f {
		delete(s.fan, f.cl.ID)
		s.active.Add(-1)
	}
	ops := f.ops[:0]
	for _, o := range f.ops {
		if o.kind == opDel && o.bucket == nil { // withdrawn while held back
			continue
		}
		ops = append(ops, o)
	}
	for k := range f.keys {
		delete(s.held, k)
	}
	s.enqueueLocked(false, append(ops, op{kind: opDel, bucket: bucketPending, key: f.key})...)
}

// sessionOp queues an in-flight record change, or applies it to the
// held-back record of a fan-out still in progress. origin is the
// publisher of a PUBLISH record ("" for other records).
func (s *Store) sessionOp(origin string, o op) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := string(o.key)
	f := s.held[k]
	if f == nil && origin != "" && o.kind == opPut {
		f = s.fan[origin]
	}
	if f == nil {
		s.enqueueLocked(false, o)
		return
	}
	if i, ok := f.keys[k]; ok {
		if o.kind == opDel {
			f.ops[i] = op{kind: opDel} // nothing was written: nothing to delete
		} else {
			f.ops[i] = o
		}
		return
	}
	if o.kind == opDel {
		s.enqueueLocked(false, o)
		return
	}
	f.keys[k] = len(f.ops)
	f.ops = append(f.ops, o)
	s.held[k] = f
}

// restorePending turns the pending records left by a crash into queued
// messages of the sessions they were meant for, and queues the rewrite:
// the new in-flight records and the pending records' deletion together.
func (s *Store) restorePending(tx *bolt.Tx, srv *mqtt.Server, now int64, st *Stats) ([]op, error) {
	var ops []op
	var maxSeq uint64
	err := tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
		if len(k) != 8 {
			return fmt.Errorf("bucket %q record %s: %w", bucketPending, describeKey(k), errBadKey)
		}
		maxSeq = max(maxSeq, binary.BigEndian.Uint64(k))
		pk, targets, err := decodePending(v)
		if err != nil {
			return fmt.Errorf("bucket %q record %s: %w", bucketPending, describeKey(k), err)
		}
		ops = append(ops, op{kind: opDel, bucket: bucketPending, key: append([]byte(nil), k...)})
		if pk.Expiry > 0 && pk.Expiry < now {
			return nil
		}
		for _, t := range targets {
			for _, sub := range t {
				cl, ok := srv.Clients.Get(sub.id)
				if !ok {
					continue
				}
				m, ok := pendingDelivery(cl, pk, sub)
				if !ok {
					continue
				}
				if cl.State.Inflight.Set(m) {
					atomic.AddInt64(&srv.Info.Inflight, 1)
				}
				ops = append(ops, op{kind: opPut, bucket: bucketInflight, key: inflightKey(sub.id, m.PacketID), val: appendMessage(nil, &m)})
				st.Pending++
				break // one member of a shared group
			}
		}
		return nil
	})
	s.seq.Store(maxSeq)
	return ops, err
}

// pendingDelivery is the queued copy of pk for the session cl, as
// mochi's fan-out would have made it; ok is false when cl has no
// identifier free. The fan-out's records and the pending record's
// deletion share one transaction, so cl cannot hold a copy already.
func pendingDelivery(cl *mqtt.Client, pk packets.Packet, sub pendingSub) (packets.Packet, bool) {
	m := pk.Copy(false)
	m.FixedHeader.Qos = sub.qos
	if !sub.rap || cl.Properties.ProtocolVersion < 5 {
		m.FixedHeader.Retain = false
	}
	m.Properties.SubscriptionIdentifier = sub.ids
	// Identifiers from the top down: clients number their own packets
	// from 1, and Moat's deliveries start at 32768.
	for id := 0xffff; id > 0x8000; id-- {
		if _, used := cl.State.Inflight.Get(uint16(id)); !used {
			m.PacketID = uint16(id)
			return m, true
		}
	}
	return packets.Packet{}, false
}
