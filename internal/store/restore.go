package store

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

// Restore loads the stored sessions and retained messages straight into srv
// (its Clients and Topics, and the matching Info counters), streaming from
// the file without building a list first, and binds the hook to srv. Call it
// once, after srv.AddHook(st.Hook(), nil) or before, but before srv.Serve.
// A record that fails to decode stops the restore with an error naming it.
func (s *Store) Restore(srv *mqtt.Server) (Stats, error) {
	start := time.Now()
	var st Stats
	if srv == nil {
		return st, errors.New("store: Restore needs a server")
	}
	if !s.srv.CompareAndSwap(nil, srv) {
		return st, errors.New("store: Restore called twice")
	}
	now := start.Unix()
	var expired [][]byte
	persisted := map[string]struct{}{}
	var pendingOps []op
	err := s.db.View(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketClients).ForEach(func(k, v []byte) error {
			rec, err := decodeClient(v)
			if err != nil {
				return fmt.Errorf("bucket %q record %s: %w", bucketClients, describeKey(k), err)
			}
			id := string(k)
			cl := srv.NewClient(nil, rec.Listener, id, false)
			cl.Properties.Username = rec.Username
			cl.Properties.Clean = rec.Clean
			cl.Properties.ProtocolVersion = rec.ProtocolVersion
			cl.Properties.Props = rec.Props
			cl.Properties.Will = rec.Will
			cl.Stop(packets.ErrServerShuttingDown) // offline until it reconnects
			srv.Clients.Add(cl)
			persisted[id] = struct{}{}
			st.Clients++
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketSubs).ForEach(func(k, v []byte) error {
			id, filter, err := splitKey(k)
			if err == nil {
				var sub packets.Subscription
				if sub, err = decodeSub(v); err == nil {
					cl, ok := srv.Clients.Get(id)
					if !ok {
						st.Orphans++
						return nil
					}
					sub.Filter = string(filter)
					if srv.Topics.Subscribe(id, sub) {
						atomic.AddInt64(&srv.Info.Subscriptions, 1)
					}
					cl.State.Subscriptions.Add(sub.Filter, sub)
					st.Subscriptions++
					return nil
				}
			}
			return fmt.Errorf("bucket %q record %s: %w", bucketSubs, describeKey(k), err)
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketInflight).ForEach(func(k, v []byte) error {
			id, rest, err := splitKey(k)
			if err == nil && len(rest) != 2 {
				err = errBadKey
			}
			if err == nil {
				var pk packets.Packet
				if pk, err = decodeMessage(v); err == nil {
					if pk.PacketID != uint16(rest[0])<<8|uint16(rest[1]) {
						err = errBadKey
					} else {
						cl, ok := srv.Clients.Get(id)
						if !ok {
							st.Orphans++
							return nil
						}
						if cl.State.Inflight.Set(pk) {
							atomic.AddInt64(&srv.Info.Inflight, 1)
						}
						st.Inflight++
						return nil
					}
				}
			}
			return fmt.Errorf("bucket %q record %s: %w", bucketInflight, describeKey(k), err)
		}); err != nil {
			return err
		}
		var err error
		if pendingOps, err = s.restorePending(tx, srv, now, &st); err != nil {
			return err
		}
		return tx.Bucket(bucketRetained).ForEach(func(k, v []byte) error {
			pk, err := decodeMessage(v)
			if err == nil && pk.TopicName != string(k) {
				err = errKeyTopic
			}
			if err != nil {
				return fmt.Errorf("bucket %q record %s: %w", bucketRetained, describeKey(k), err)
			}
			if pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now {
				expired = append(expired, append([]byte(nil), k...))
				st.Expired++
				return nil
			}
			srv.Topics.RetainMessage(pk)
			st.Retained++
			return nil
		})
	})
	atomic.StoreInt64(&srv.Info.Retained, int64(srv.Topics.Retained.Len()))
	if err != nil {
		return st, fmt.Errorf("store %s: damaged: %w", s.file, err)
	}
	s.mu.Lock()
	for id := range persisted {
		s.persisted[id] = struct{}{}
	}
	for _, k := range expired {
		s.enqueueLocked(false, op{kind: opRetained, key: k})
	}
	if len(pendingOps) > 0 {
		s.enqueueLocked(false, pendingOps...)
	}
	s.mu.Unlock()
	st.Duration = time.Since(start)
	s.log.Info("store restored", "file", s.file, "retained", st.Retained, "expired", st.Expired,
		"sessions", st.Clients, "subscriptions", st.Subscriptions, "inflight", st.Inflight, "pending", st.Pending, "took", st.Duration)
	return st, nil
}

// Adopt replaces everything in the store with srv's state — retained
// messages and persistent sessions with their subscriptions and queued
// messages — and binds it to srv, returning once that is on disk. It is
// for a store re-opened under a running broker (the mount died and came
// back): what was refused or lost meanwhile is in memory, and memory is
// what clients were told. Call it after Hook().Switch to this store.
func (s *Store) Adopt(srv *mqtt.Server) (Stats, error) {
	start := time.Now()
	var st Stats
	if srv == nil {
		return st, errors.New("store: Adopt needs a server")
	}
	if !s.srv.CompareAndSwap(nil, srv) {
		return st, errors.New("store: already bound to a server")
	}
	s.mu.Lock()
	ops := []op{{kind: opWipe}}
	for topic, pk := range srv.Topics.Retained.GetAll() {
		// mochi's own $SYS values are retained in memory, never stored.
		if len(pk.Payload) == 0 || strings.HasPrefix(topic, "$SYS/") {
			continue
		}
		ops = append(ops, op{kind: opRetained, key: []byte(topic), pk: &pk})
		st.Retained++
	}
	s.persisted = map[string]struct{}{}
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Inline || !persistent(cl) {
			continue
		}
		s.persisted[cl.ID] = struct{}{}
		ops = append(ops, clientOp(cl))
		st.Clients++
		for _, sub := range cl.State.Subscriptions.GetAll() {
			ops = append(ops, subOp(cl.ID, &sub))
			st.Subscriptions++
		}
		for _, m := range cl.State.Inflight.GetAll(false) {
			ops = append(ops, op{kind: opPut, bucket: bucketInflight, key: inflightKey(cl.ID, m.PacketID), val: appendMessage(nil, &m)})
			st.Inflight++
		}
	}
	b := s.enqueueLocked(true, ops...)
	s.mu.Unlock()
	<-b.done
	st.Duration = time.Since(start)
	if b.err != nil {
		return st, b.err
	}
	s.log.Info("store rewritten from memory", "file", s.file, "retained", st.Retained,
		"sessions", st.Clients, "subscriptions", st.Subscriptions, "inflight", st.Inflight, "took", st.Duration)
	return st, nil
}
