package store

import (
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Hook persists retained messages and persistent sessions through its Store.
// Add it with srv.AddHook(st.Hook(), nil) after st.Restore(srv).
type Hook struct {
	mqtt.HookBase
	s *Store
}

var _ mqtt.Hook = (*Hook)(nil)

// Hook returns the mochi hook writing into s.
func (s *Store) Hook() *Hook { return &Hook{s: s} }

// ID implements mqtt.Hook.
func (h *Hook) ID() string { return "moat-store" }

// Provides implements mqtt.Hook.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnRetainMessage, mqtt.OnRetainedExpired,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped:
		return true
	}
	return false
}

// OnPublish refuses retained publishes once a write has failed, so nothing
// is acknowledged that was not saved. MQTT 5 at QoS>0 gets a 0x80 PUBACK/PUBREC;
// a 3.1.1 client at QoS>0 has no way to hear a refusal, so its connection is
// closed; QoS 0 is dropped.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !pk.FixedHeader.Retain {
		return pk, nil
	}
	err := h.s.Healthy()
	if err == nil && h.s.isClosed() {
		err = ErrClosed
	}
	if err == nil {
		return pk, nil
	}
	if pk.FixedHeader.Qos > 0 && !cl.Net.Inline {
		if cl.Properties.ProtocolVersion == 5 {
			if pk.FixedHeader.Qos == 1 {
				return pk, packets.ErrUnspecifiedError
			}
			// mochi answers a refused QoS 2 with a PUBACK, which clients
			// reject: send the PUBREC ourselves and let mochi drop it.
			_ = cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
				PacketID:    pk.PacketID,
				ReasonCode:  packets.ErrUnspecifiedError.Code,
			})
			return pk, packets.ErrRejectPacket
		}
		cl.Stop(fmt.Errorf("retained message refused: %w", err))
	}
	return pk, packets.ErrRejectPacket
}

// OnRetainMessage runs after mochi updated its in-memory retained set and
// before it writes the PUBACK/PUBREC, which waits for this call: QoS 1/2
// returns only once the value is on disk. If that write failed, the
// connection is closed here so the ack that follows cannot be written.
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	wait := pk.FixedHeader.Qos > 0
	err := h.s.saveRetained(pk.TopicName, &pk, wait)
	if err == nil || cl.Net.Inline {
		return
	}
	if errors.Is(err, ErrRecordTooLarge) {
		// Not saved, so not kept: memory and disk must agree.
		if srv := h.s.srv.Load(); srv != nil {
			srv.Topics.Retained.Delete(pk.TopicName)
		}
		h.s.log.Warn("retained message refused: too large for the store", "client", describeKey([]byte(cl.ID)), "err", err)
	}
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Type == packets.Publish && pk.PacketID != 0 && !cl.Closed() {
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Puback},
			PacketID:    pk.PacketID,
			ReasonCode:  packets.ErrUnspecifiedError.Code,
		}
		if pk.FixedHeader.Qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		_ = cl.WritePacket(ack)
	}
	cl.Stop(fmt.Errorf("retained message not saved: %w", err))
}

// OnRetainedExpired removes a retained message mochi expired.
func (h *Hook) OnRetainedExpired(topic string) {
	_ = h.s.saveRetained(topic, nil, false)
}

// persistent mirrors mochi's rule for a session that outlives its connection.
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

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
	s := h.s
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
	s := h.s
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
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.s.forget(cl.ID) }

// OnWillSent stores the client record with its Will now cleared.
func (h *Hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if h.s.current(cl) && h.s.hasSession(cl.ID) {
		h.s.enqueue(clientOp(cl))
	}
}

// OnSubscribed stores the granted subscriptions.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	s := h.s
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
	s := h.s
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
	s := h.s
	if !persistent(cl) || !s.current(cl) || !s.hasSession(cl.ID) {
		return
	}
	s.enqueue(op{kind: opPut, bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID), val: appendMessage(nil, &pk)})
}

// OnQosComplete removes a finished in-flight message.
func (h *Hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.dropInflight(cl, pk) }

// OnQosDropped removes an expired or cleared in-flight message.
func (h *Hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { h.dropInflight(cl, pk) }

func (h *Hook) dropInflight(cl *mqtt.Client, pk packets.Packet) {
	s := h.s
	if cl.Net.Inline || cl.IsTakenOver() || !s.hasSession(cl.ID) {
		return
	}
	s.enqueue(op{kind: opDel, bucket: bucketInflight, key: inflightKey(cl.ID, pk.PacketID)})
}
