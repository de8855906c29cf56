package store

import (
	"fmt"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mochi"
)

// Hook persists retained messages and persistent sessions through its Store.
// Add it with srv.AddHook(st.Hook(), nil) after st.Restore(srv).
type Hook struct {
	mqtt.HookBase
	cur atomic.Pointer[Store]
}

var _ mqtt.Hook = (*Hook)(nil)

// Hook returns the mochi hook writing into s.
func (s *Store) Hook() *Hook {
	h := &Hook{}
	h.cur.Store(s)
	return h
}

// Switch makes the hook write into st from now on: mochi cannot remove a
// hook, so a store re-opened after its mount died takes over the one
// registered. Call st.Adopt afterwards to write mochi's state into it.
func (h *Hook) Switch(st *Store) { h.cur.Store(st) }

func (h *Hook) st() *Store { return h.cur.Load() }

// ID implements mqtt.Hook.
func (h *Hook) ID() string { return "moat-store" }

// Provides implements mqtt.Hook.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnPublished, mqtt.OnRetainMessage, mqtt.OnRetainedExpired,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped:
		return true
	}
	return false
}

// OnPublish refuses retained publishes once a write has failed, so nothing
// is acknowledged that was not saved, and makes a QoS 1/2 publish that
// stored sessions subscribe to durable before mochi acknowledges it (see
// pending.go). A refusal reaches MQTT 5 clients at QoS>0 as a 0x80
// PUBACK/PUBREC; a 3.1.1 client at QoS>0 has no way to hear one, so its
// connection is closed; QoS 0 is dropped.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain {
		st := h.st()
		err := st.Healthy()
		if err == nil && st.isClosed() {
			err = ErrClosed
		}
		if err != nil {
			return refuse(cl, pk, err)
		}
	}
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		return pk, nil
	}
	st := h.st()
	srv := st.srv.Load()
	if srv == nil {
		return pk, nil
	}
	t := st.pendingTargets(srv, &pk, cl.ID)
	if len(t) == 0 {
		return pk, nil
	}
	b := st.beginFanout(cl, &pk, t)
	if oc, ok := cl.Net.Conn.(orderedConn); ok {
		// The ack mochi writes next waits in the connection's stream.
		oc.WriteAfter(b.done, func() error { return b.err }, failAck(cl, pk))
		return pk, nil
	}
	<-b.done
	if b.err != nil {
		return refuse(cl, pk, b.err)
	}
	return pk, nil
}

// refuse answers a publish the store could not take.
func refuse(cl *mqtt.Client, pk packets.Packet, err error) (packets.Packet, error) {
	if pk.FixedHeader.Qos > 0 && !cl.Net.Inline {
		if cl.Properties.ProtocolVersion == 5 {
			if pk.FixedHeader.Qos == 1 {
				return pk, packets.ErrUnspecifiedError
			}
			// mochi answers a refused QoS 2 with a PUBACK, which clients
			// reject: send the PUBREC ourselves and let mochi drop it.
			_ = mochi.WriteAck(cl, pk, packets.ErrUnspecifiedError.Code)
			return pk, packets.ErrRejectPacket
		}
		cl.Stop(fmt.Errorf("publish refused: %w", err))
	}
	return pk, packets.ErrRejectPacket
}

// OnPublished ends the publish's fan-out: its sessions' records and the
// deletion of its pending record are committed together.
func (h *Hook) OnPublished(cl *mqtt.Client, pk packets.Packet) { h.st().endFanout(cl) }

// OnRetainMessage runs after mochi updated its in-memory retained set and
// before it writes the PUBACK/PUBREC: a QoS 1/2 value reaches the client's
// ack only once it is on disk. On Moat's listeners the ack is held in the
// connection's outbound stream until the commit (so the client's next
// packets are read meanwhile and share the commit); elsewhere this call
// waits. If the write failed, the ack is never written: MQTT 5 clients get
// 0x80 instead, and the connection is closed.
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	st := h.st()
	wait := pk.FixedHeader.Qos > 0
	acked := wait && !cl.Net.Inline && pk.FixedHeader.Type == packets.Publish && pk.PacketID != 0 && !cl.Closed()
	if err := checkRecord([]byte(pk.TopicName), nil); err != nil {
		// Not savable, so not kept: memory and disk must agree. The
		// failure is this message's only; the store stays healthy.
		if srv := st.srv.Load(); srv != nil {
			srv.Topics.Retained.Delete(pk.TopicName)
		}
		st.log.Warn("retained message refused: too large for the store", "client", describeKey([]byte(cl.ID)), "err", err)
		if cl.Net.Inline {
			return
		}
		if acked && cl.Properties.ProtocolVersion == 5 {
			_ = mochi.WriteAck(cl, pk, packets.ErrUnspecifiedError.Code)
		}
		cl.Stop(fmt.Errorf("retained message not saved: %w", err))
		return
	}
	if oc, ok := cl.Net.Conn.(orderedConn); ok && acked {
		b := st.queueRetained(pk.TopicName, &pk, true)
		oc.WriteAfter(b.done, func() error { return b.err }, failAck(cl, pk))
		return
	}
	err := st.saveRetained(pk.TopicName, &pk, wait)
	if err == nil || cl.Net.Inline {
		return
	}
	if acked && cl.Properties.ProtocolVersion == 5 {
		_ = mochi.WriteAck(cl, pk, packets.ErrUnspecifiedError.Code)
	}
	cl.Stop(fmt.Errorf("retained message not saved: %w", err))
}

// orderedConn is a connection that can hold its writes until a commit is
// known (Moat's listeners).
type orderedConn interface {
	WriteAfter(done <-chan struct{}, result func() error, onFail []byte)
}

// failAck is what an MQTT 5 client gets instead of its ack when the
// commit fails: the ack with 0x80. 3.1.1 has no negative ack.
func failAck(cl *mqtt.Client, pk packets.Packet) []byte {
	if cl.Properties.ProtocolVersion != 5 {
		return nil
	}
	return mochi.AckBytes(pk, packets.ErrUnspecifiedError.Code)
}

// OnRetainedExpired removes a retained message mochi expired.
func (h *Hook) OnRetainedExpired(topic string) {
	_ = h.st().saveRetained(topic, nil, false)
}

// persistent is mochi's rule for a session that outlives its connection.
func persistent(cl *mqtt.Client) bool { return mochi.Persistent(cl) }

// current reports whether cl still owns its client id: events from a
// session that was taken over must not touch the new owner's records.
func (s *Store) current(cl *mqtt.Client) bool {
	if cl.Net.Inline || cl.IsTakenOver() {
		return false
	}
	srv := s.srv.Load()
	if srv == nil {
		return false
	}
	got, ok := srv.Clients.Get(cl.ID)
	return ok && got == cl
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func clientOp(cl *mqtt.Client) op {
	rec := clientFrom(cl)
	return op{kind: opPut, bucket: bucketClients, key: []byte(cl.ID), val: appendClient(nil, &rec)}
}

func subOp(id string, sub *packets.Subscription) op {
	return op{kind: opPut, bucket: bucketSubs, key: subKey(id, sub.Filter), val: appendSub(nil, sub)}
}

// forget queues deletion of a stored session, if there is one.
func (s *Store) forget(id string) {
	s.mu.Lock()
	if _, ok := s.persisted[id]; ok {
		delete(s.persisted, id)
		s.enqueueLocked(false, op{kind: opDelClient, key: []byte(id)})
	}
	s.mu.Unlock()
}

func (s *Store) hasSession(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.persisted[id]
	return ok
}

// OnSessionEstablished replaces the stored session with the client's whole
// state after CONNACK (inherited subscriptions and in-flight included), or
// drops it when the new connection is not persistent.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s := h.st()
	if !s.current(cl) {
		return
	}
	if !persistent(cl) {
		s.forget(cl.ID)
		return
	}
	ops := []op{{kind: opDelClient, key: []byte(cl.ID)}, clientOp(cl)}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		ops = append(ops, subOp(cl.ID, &sub))
	}
	for _, m := range cl.State.Inflight.GetAll(false) {
		ops = append(ops, op{kind: opPut, bucket: bucketInflight, key: inflightKey(cl.ID, m.PacketID), val: appendMessage(nil, &m)})
	}
	s.mu.Lock()
	s.persisted[cl.ID] = struct{}{}
	s.enqueueLocked(false, ops...)
	s.mu.Unlock()
}

// OnDisconnect keeps the record (its Will may have changed) or drops an
// expiring session.
func (h *Hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	s := h.st()
	s.endFanout(cl) // a publish whose ack could not be written
	if !s.current(cl) {
		return
	}
	if expire || !persistent(cl) {
		s.forget(cl.ID)
		return
	}
	if s.hasSession(cl.ID) {
		s.enqueue(clientOp(cl))
	}
}

// OnClientExpired drops a session mochi expired.
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.st().forget(cl.ID) }

// OnWillSent stores the client record with its Will now cleared.
func (h *Hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if s := h.st(); s.current(cl) && s.hasSession(cl.ID) {
		s.enqueue(clientOp(cl))
	}
}

// OnSubscribed stores the granted subscriptions.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	s := h.st()
	if !persistent(cl) || !s.current(cl) || !s.hasSession(cl.ID) {
		return
	}
	var ops []op
	for i := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			ops = append(ops, subOp(cl.ID, &pk.Filters[i]))
		}
	}
	if len(ops) > 0 {
		s.enqueue(ops...)
	}
}

// OnUnsubscribed removes subscriptions.
func (h *Hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	s := h.st()
	if !s.current(cl) || !s.hasSession(cl.ID) {
		return
	}
	ops := make([]op, 0, len(pk.Filters))
	for _, f := range pk.Filters {
		ops = append(ops, op{kind: opDel, bucket: bucketSubs, key: subKey(cl.ID, f.Filter)})
	}
	s.enqueue(ops...)
}

// OnQosPublish stores a queued or in-flight QoS 1/2 message.
func (h *Hook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	s := h.st()
	if !persistent(cl) || !s.current(cl) || !s.hasSession(cl.ID) {
		return
	}
	origin := ""
	if pk.FixedHeader.Type == packets.Publish {
		origin = pk.Origin
	}
	s.sessionOp(origin, op{kind: opPut, bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID), val: appendMessage(nil, &pk)})
}

// OnQosComplete removes a finished in-flight message.
func (h *Hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.dropInflight(cl, pk) }

// OnQosDropped removes an expired or cleared in-flight message.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.dropInflight(cl, pk) }

func (h *Hook) dropInflight(cl *mqtt.Client, pk packets.Packet) {
	s := h.st()
	if cl.Net.Inline || cl.IsTakenOver() || !s.hasSession(cl.ID) {
		return
	}
	s.sessionOp("", op{kind: opDel, bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID)})
}
