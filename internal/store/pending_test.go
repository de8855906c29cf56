package store

import (
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
)

// offlineSession makes a persistent MQTT 5 session subscribed to filter
// at qos, and waits until its connection is gone.
func offlineSession(t *testing.T, b *broker, id, filter string, qos byte) {
	t.Helper()
	c := dialV5(t, b.addr, id, true, 3600)
	c.subscribe(t, filter, qos)
	_ = c.c.Disconnect(&paho.Disconnect{})
	waitFor(t, id+" offline", func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.Closed()
	})
}

// A crash after a publish's pending record is on disk but before its
// fan-out's records are committed: the restart queues the message for
// the sessions it was meant for, downgraded to their subscription's QoS,
// for one member of a shared group only, and removes the pending record.
func TestPendingRecordRestored(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	b := startBroker(t, st)
	offlineSession(t, b, "s1", "q/#", 1)
	offlineSession(t, b, "s2", "q/+", 2)
	offlineSession(t, b, "g1", "$share/g/q/#", 2)
	offlineSession(t, b, "g2", "$share/g/q/#", 2)
	waitFor(t, "sessions stored", func() bool { return st.hasSession("s1") && st.hasSession("g2") })

	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2},
		TopicName: "q/x", Payload: []byte("acked"), Origin: "pub", Created: time.Now().Unix()}
	targets := st.pendingTargets(b.srv, &pk, "pub")
	if len(targets) != 3 {
		t.Fatalf("targets %+v, want s1, s2 and the shared group", targets)
	}
	// The publisher's connection as mochi would hold it; the fan-out never ends.
	pub := b.srv.NewClient(nil, "t", "pub", false)
	if b := st.beginFanout(pub, &pk, targets); waitBatch(b) != nil {
		t.Fatal(b.err)
	}
	expired := pk
	expired.Payload, expired.Expiry = []byte("expired"), time.Now().Unix()-10
	if b := st.beginFanout(b.srv.NewClient(nil, "t", "pub2", false), &expired, targets); waitBatch(b) != nil {
		t.Fatal(b.err)
	}
	b.stop(t) // as a crash would leave it: Close writes nothing the fan-out holds

	st = openStore(t, dir, Options{})
	b = startBroker(t, st)
	if b.stats.Pending != 3 {
		t.Fatalf("restored %d pending deliveries, want 3 (stats %+v)", b.stats.Pending, b.stats)
	}
	want := map[string]byte{"s1": 1, "s2": 2}
	shared := 0
	for _, id := range []string{"s1", "s2", "g1", "g2"} {
		cl, _ := b.srv.Clients.Get(id)
		msgs := cl.State.Inflight.GetAll(false)
		for _, m := range msgs {
			if string(m.Payload) != "acked" || m.PacketID <= 0x8000 {
				t.Errorf("%s: queued %q with packet id %d", id, m.Payload, m.PacketID)
			}
			if q, ok := want[id]; ok && m.FixedHeader.Qos != q {
				t.Errorf("%s: QoS %d, want %d", id, m.FixedHeader.Qos, q)
			}
		}
		if id[0] == 'g' {
			shared += len(msgs)
		} else if len(msgs) != 1 {
			t.Errorf("%s: %d queued messages, want 1", id, len(msgs))
		}
	}
	if shared != 1 {
		t.Errorf("shared group got %d copies, want 1", shared)
	}
	b.stop(t)

	// The rewrite was committed: nothing pending any more, and the queued
	// copies are ordinary session records now.
	b = startBroker(t, openStore(t, dir, Options{}))
	if b.stats.Pending != 0 || b.stats.Inflight != 3 {
		t.Fatalf("second restart: %+v, want 0 pending and 3 in flight", b.stats)
	}
}

// A subscriber that acknowledges a delivery before the publisher's
// fan-out ends leaves no stale record: the held-back record is withdrawn.
func TestHeldBackRecordWithdrawn(t *testing.T) {
	st := openStore(t, t.TempDir(), Options{})
	st.persisted["sub"] = struct{}{}
	pub := newServer().NewClient(nil, "t", "pub", false)
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "q", Origin: "pub"}
	if b := st.beginFanout(pub, &pk, []pendingTarget{{{id: "sub", qos: 1}}}); waitBatch(b) != nil {
		t.Fatal(b.err)
	}
	key := inflightKey("sub", 0x8001)
	st.sessionOp("pub", op{kind: opPut, bucket: bucketInflight, key: key, val: appendMessage(nil, &pk)})
	st.sessionOp("", op{kind: opDel, bucket: bucketInflight, key: key}) // the subscriber's PUBACK
	st.endFanout(pub)
	st.mu.Lock()
	ops := st.cur.ops
	st.mu.Unlock()
	for _, o := range ops {
		if o.kind == opPut && string(o.key) == string(key) {
			t.Fatalf("acknowledged delivery still queued for writing: %+v", ops)
		}
	}
	if len(st.held) != 0 || len(st.fan) != 0 || st.active.Load() != 0 {
		t.Fatalf("fan-out state left: held %d fan %d active %d", len(st.held), len(st.fan), st.active.Load())
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func waitBatch(b *batch) error {
	<-b.done
	return b.err
}
