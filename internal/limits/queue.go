package limits

import (
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Queues bounds what offline sessions hold: the bytes queued for one
// session (max_queued_bytes) and the messages queued for all sessions of
// one user (max_queued_messages_per_user). mochi has no hook before it
// queues a delivery except the read check, so the auth hook asks
// MayQueue there for a session whose client is offline, and a message
// over the limit is not queued for it (counted and logged, as mosquitto
// drops past max_queued_messages). Queues counts what mochi queues
// through its QoS hooks, by client id, so a session taken over keeps its
// count.
type Queues struct {
	mqtt.HookBase
	h *Hook

	mu      sync.Mutex
	clients map[string]*queued // by client id
	users   map[string]int     // messages queued for a user's sessions
	// index holds the ids in clients: the acks of clients with nothing
	// counted (the common case) are told apart without the lock.
	index sync.Map
}

type queued struct {
	user  string
	bytes int64
	sizes map[uint16]int64 // by packet id
}

var _ mqtt.Hook = (*Queues)(nil)

// Queues returns the queue accounting of the hook's settings; add it
// with srv.AddHook and hand MayQueue to the auth hook.
func (h *Hook) Queues() *Queues {
	return &Queues{h: h, clients: map[string]*queued{}, users: map[string]int{}}
}

// ID implements mqtt.Hook.
func (q *Queues) ID() string { return "moat-queues" }

// Provides implements mqtt.Hook.
func (q *Queues) Provides(b byte) bool {
	switch b {
	case mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnSessionEstablished:
		return true
	}
	return false
}

// MayQueue reports whether one more message may be queued for cl, whose
// connection is gone; a refusal is counted under the limit that bit.
func (q *Queues) MayQueue(cl *mqtt.Client) bool {
	s := q.h.set
	if s.MaxQueuedBytes <= 0 && s.MaxQueuedPerUser <= 0 {
		return true
	}
	user := string(cl.Properties.Username)
	q.mu.Lock()
	var bytes int64
	if c := q.clients[cl.ID]; c != nil {
		bytes = c.bytes
	}
	n := q.users[user]
	q.mu.Unlock()
	switch {
	case s.MaxQueuedBytes > 0 && bytes >= s.MaxQueuedBytes:
		q.h.hit(LimitQueuedBytes, cl, "queued_bytes", bytes)
		return false
	case s.MaxQueuedPerUser > 0 && n >= s.MaxQueuedPerUser:
		q.h.hit(LimitQueuedPerUser, cl, "queued", n)
		return false
	}
	return true
}

// OnQosPublish counts a delivery queued for an offline session (a record
// replacing one with the same packet id replaces its size). Deliveries to
// connected clients, bounded by their receive maximum, cost no lock.
func (q *Queues) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish || !cl.Closed() {
		return
	}
	size := int64(len(pk.TopicName) + len(pk.Payload))
	q.mu.Lock()
	defer q.mu.Unlock()
	c := q.clients[cl.ID]
	if c == nil {
		c = &queued{user: string(cl.Properties.Username), sizes: map[uint16]int64{}}
		q.clients[cl.ID] = c
		q.index.Store(cl.ID, struct{}{})
	}
	if old, ok := c.sizes[pk.PacketID]; ok {
		c.bytes -= old
	} else {
		q.users[c.user]++
	}
	c.sizes[pk.PacketID] = size
	c.bytes += size
}

// OnQosComplete forgets an acknowledged delivery.
func (q *Queues) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { q.forget(cl.ID, pk.PacketID) }

// OnQosDropped forgets an expired, refused or cleared delivery.
func (q *Queues) OnQosDropped(cl *mqtt.Client, pk packets.Packet) { q.forget(cl.ID, pk.PacketID) }

func (q *Queues) forget(id string, pid uint16) {
	if _, ok := q.index.Load(id); !ok {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	c := q.clients[id]
	if c == nil {
		return
	}
	if size, ok := c.sizes[pid]; ok {
		delete(c.sizes, pid)
		c.bytes -= size
		if q.users[c.user]--; q.users[c.user] <= 0 {
			delete(q.users, c.user)
		}
	}
	if len(c.sizes) == 0 {
		delete(q.clients, id)
		q.index.Delete(id)
	}
}

// OnSessionEstablished recounts the session from what it holds: messages
// restored from the store, or inherited from a taken-over connection of
// another owner, passed no QoS hook.
func (q *Queues) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	msgs := cl.State.Inflight.GetAll(false)
	if _, counted := q.index.Load(cl.ID); !counted && len(msgs) == 0 {
		return // a fresh session: nothing to recount
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if c := q.clients[cl.ID]; c != nil {
		if q.users[c.user] -= len(c.sizes); q.users[c.user] <= 0 {
			delete(q.users, c.user)
		}
		delete(q.clients, cl.ID)
		q.index.Delete(cl.ID)
	}
	c := &queued{user: string(cl.Properties.Username), sizes: map[uint16]int64{}}
	for _, m := range msgs {
		if m.FixedHeader.Type == packets.Publish {
			size := int64(len(m.TopicName) + len(m.Payload))
			c.sizes[m.PacketID] = size
			c.bytes += size
		}
	}
	if len(c.sizes) > 0 {
		q.clients[cl.ID] = c
		q.index.Store(cl.ID, struct{}{})
		q.users[c.user] += len(c.sizes)
	}
}

// Recount counts the sessions srv holds, after a restore from the store.
func (q *Queues) Recount(srv *mqtt.Server) {
	for _, cl := range srv.Clients.GetAll() {
		if !cl.Net.Inline {
			q.OnSessionEstablished(cl, packets.Packet{})
		}
	}
}

// Len is how many sessions hold counted messages (tests, bounds).
func (q *Queues) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.clients)
}
