package limits

import (
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func queuedMsg(pid uint16, payload int) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: pid,
		TopicName: "t", Payload: make([]byte, payload)}
}

func TestQueuesAccounting(t *testing.T) {
	srv := mqtt.New(nil)
	h := New(Options{Server: srv, Settings: Settings{MaxQueuedBytes: 100, MaxQueuedPerUser: 3}})
	q := h.Queues()
	a := srv.NewClient(nil, "l", "a", false)
	a.Properties.Username = []byte("alice")
	a.Stop(nil) // offline
	b := srv.NewClient(nil, "l", "b", false)
	b.Properties.Username = []byte("alice")
	b.Stop(nil)

	q.OnQosPublish(a, queuedMsg(1, 9), 0, 0) // 10 bytes with its topic
	q.OnQosPublish(a, queuedMsg(1, 9), 0, 0) // the same record again: no double count
	q.OnQosPublish(b, queuedMsg(1, 9), 0, 0)
	if !q.MayQueue(a) {
		t.Fatal("refused under both limits")
	}
	q.OnQosPublish(a, queuedMsg(2, 9), 0, 0)
	if q.MayQueue(b) {
		t.Error("a 4th message for alice's sessions allowed (max 3)")
	}
	q.OnQosComplete(a, queuedMsg(2, 0))
	q.OnQosDropped(b, queuedMsg(1, 0))
	if !q.MayQueue(b) {
		t.Error("refused after two were acknowledged or dropped")
	}
	q.OnQosPublish(a, queuedMsg(3, 99), 0, 0) // 10 + 100 bytes for a
	if q.MayQueue(a) {
		t.Error("a session over max_queued_bytes may queue more")
	}
	if !q.MayQueue(b) {
		t.Error("another session of the same user refused on a's bytes")
	}
	// Inbound QoS 2 records are not deliveries.
	q.OnQosPublish(b, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 7}, 0, 0)
	q.OnQosDropped(a, queuedMsg(1, 0))
	q.OnQosDropped(a, queuedMsg(3, 0))
	if q.Len() != 0 {
		t.Errorf("%d sessions still counted after everything left", q.Len())
	}

	// A session restored from the store is counted from what it holds.
	a.State.Inflight.Set(queuedMsg(9, 200))
	q.Recount(srv)
	srv.Clients.Add(a)
	q.Recount(srv)
	if q.MayQueue(a) {
		t.Error("restored session over max_queued_bytes may queue more")
	}
}
