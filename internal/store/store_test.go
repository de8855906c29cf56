package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

func TestRetainedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, openStore(t, dir, Options{}))
	pub := dialV5(t, b.addr, "pub", true, 0)
	cases := []struct {
		topic   string
		payload string
		qos     byte
	}{
		{"home/a", "one", 1},
		{"home/b", "two", 2},
		{"home/c", "zero", 0},
		{"home/gone", "x", 1},
	}
	for _, c := range cases {
		if _, err := pub.publish(c.topic, []byte(c.payload), c.qos, true); err != nil {
			t.Fatalf("publish %s: %v", c.topic, err)
		}
	}
	if _, err := pub.publish("home/gone", nil, 1, true); err != nil { // empty payload deletes
		t.Fatal(err)
	}
	if _, err := pub.publish("home/live", []byte("not retained"), 1, false); err != nil {
		t.Fatal(err)
	}
	b.stop(t)

	b = startBroker(t, openStore(t, dir, Options{}))
	if b.stats.Retained != 3 {
		t.Fatalf("restored %d retained, want 3", b.stats.Retained)
	}
	if got := b.srv.Info.Retained; got != 3 {
		t.Fatalf("Info.Retained = %d, want 3", got)
	}
	sub := dialV5(t, b.addr, "sub", true, 0)
	sub.subscribe(t, "home/#", 1)
	got := map[string]string{}
	for range 3 {
		m := sub.next(t)
		if !m.Retain {
			t.Errorf("%s: retain flag not set", m.Topic)
		}
		got[m.Topic] = string(m.Payload)
	}
	want := map[string]string{"home/a": "one", "home/b": "two", "home/c": "zero"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// Concurrent publishers on the same topics: what is on disk must be what
// was in memory, whatever order the retains raced in.
func TestLatestValueWinsUnderConcurrency(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, openStore(t, dir, Options{}))
	const writers, perWriter = 16, 40
	topics := []string{"race/0", "race/1", "race/2"}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialRaw(b.addr, fmt.Sprintf("w%d", w), true)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := range perWriter {
				if err := publishQoS1(c, topics[i%len(topics)], fmt.Appendf(nil, "w%d-%d", w, i), true); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mem := map[string]string{}
	for _, tp := range topics {
		pk, ok := b.srv.Topics.Retained.Get(tp)
		if !ok {
			t.Fatalf("%s not retained in memory", tp)
		}
		mem[tp] = string(pk.Payload)
	}
	b.stop(t)
	b = startBroker(t, openStore(t, dir, Options{}))
	for _, tp := range topics {
		pk, _ := b.srv.Topics.Retained.Get(tp)
		if string(pk.Payload) != mem[tp] {
			t.Errorf("%s: disk %q, memory had %q", tp, pk.Payload, mem[tp])
		}
	}
}

func failingStore(t *testing.T, dir string) (*Store, *atomic.Bool) {
	var fail atomic.Bool
	st := openStore(t, dir, Options{beforeCommit: func() error {
		if fail.Load() {
			return errInjected
		}
		return nil
	}})
	return st, &fail
}

// A retained message whose write fails is never acknowledged: MQTT 5 gets
// 0x80, 3.1.1 loses the connection; later retained publishes are refused.
func TestFailedWriteIsNotAcknowledged(t *testing.T) {
	dir := t.TempDir()
	st, fail := failingStore(t, dir)
	b := startBroker(t, st)

	v5 := dialV5(t, b.addr, "v5", true, 0)
	if _, err := v5.publish("ok/v5", []byte("saved"), 1, true); err != nil {
		t.Fatal(err)
	}
	v3, err := dialRaw(b.addr, "v3", true)
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	if err := publishQoS1(v3, "ok/v3", []byte("saved"), true); err != nil {
		t.Fatal(err)
	}
	if st.Healthy() != nil {
		t.Fatal(st.Healthy())
	}

	fail.Store(true)
	// In flight when the write fails (OnRetainMessage path).
	resp, err := v5.publish("bad/v5", []byte("lost"), 1, true)
	if err == nil || resp == nil || resp.ReasonCode != packets.ErrUnspecifiedError.Code {
		t.Fatalf("v5 in-flight: resp %+v err %v, want reason 0x80", resp, err)
	}
	if st.Healthy() == nil {
		t.Fatal("store still healthy after a failed write")
	}
	if err := publishQoS1(v3, "bad/v3", []byte("lost"), true); err == nil {
		t.Fatal("v3 in-flight retained publish acknowledged after a failed write")
	}

	// Refused up front (OnPublish path).
	v5b := dialV5(t, b.addr, "v5b", true, 0)
	for _, qos := range []byte{1, 2} {
		resp, err := v5b.publish("bad/v5b", []byte("lost"), qos, true)
		if resp == nil || resp.ReasonCode != packets.ErrUnspecifiedError.Code {
			t.Fatalf("v5 qos %d refused: resp %+v err %v, want reason 0x80", qos, resp, err)
		}
	}
	if _, err := v5b.publish("plain", []byte("not retained"), 1, false); err != nil {
		t.Fatalf("non-retained publish refused: %v", err)
	}
	v3b, err := dialRaw(b.addr, "v3b", true)
	if err != nil {
		t.Fatal(err)
	}
	defer v3b.Close()
	if err := publishQoS1(v3b, "plain", []byte("not retained"), false); err != nil {
		t.Fatalf("v3 non-retained publish refused: %v", err)
	}
	if err := publishQoS1(v3b, "bad/v3b", []byte("lost"), true); err == nil {
		t.Fatal("v3 retained publish acknowledged by an unhealthy store")
	}

	b.stop(t)
	b = startBroker(t, openStore(t, dir, Options{}))
	for _, tp := range []string{"ok/v5", "ok/v3"} {
		if _, ok := b.srv.Topics.Retained.Get(tp); !ok {
			t.Errorf("%s lost", tp)
		}
	}
	for _, tp := range []string{"bad/v5", "bad/v3", "bad/v5b", "bad/v3b"} {
		if _, ok := b.srv.Topics.Retained.Get(tp); ok {
			t.Errorf("%s on disk although its write failed", tp)
		}
	}
}

func TestSessionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, openStore(t, dir, Options{}))
	sub := dialV5(t, b.addr, "sub", true, 3600)
	sub.subscribe(t, "q/#", 1)
	sub.c.Disconnect(&paho.Disconnect{})
	waitFor(t, "subscriber offline", func() bool {
		cl, ok := b.srv.Clients.Get("sub")
		return ok && cl.Closed()
	})
	v3sub, err := dialRaw(b.addr, "v3sub", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := v3sub.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "q/#", Qos: 1}}}); err != nil {
		t.Fatal(err)
	}
	if pk, err := v3sub.Next(testDeadline); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback: %v %v", pk.FixedHeader.Type, err)
	}
	v3sub.Close()
	waitFor(t, "v3 subscriber offline", func() bool {
		cl, ok := b.srv.Clients.Get("v3sub")
		return ok && cl.Closed()
	})

	pub := dialV5(t, b.addr, "pub", true, 0)
	for i := range 3 {
		if _, err := pub.publish("q/x", fmt.Appendf(nil, "m%d", i), 1, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"sub", "v3sub"} {
		waitFor(t, id+" queue", func() bool {
			cl, ok := b.srv.Clients.Get(id)
			return ok && cl.State.Inflight.Len() == 3
		})
	}
	b.stop(t)

	b = startBroker(t, openStore(t, dir, Options{}))
	if b.stats.Clients != 2 || b.stats.Subscriptions != 2 || b.stats.Inflight != 6 {
		t.Fatalf("restored %+v, want 2 clients, 2 subscriptions, 6 in flight", b.stats)
	}
	sub = dialV5(t, b.addr, "sub", false, 3600)
	got := map[string]bool{}
	for range 3 {
		got[string(sub.next(t).Payload)] = true
	}
	for i := range 3 {
		if !got[fmt.Sprintf("m%d", i)] {
			t.Errorf("queued m%d not delivered after restart: %v", i, got)
		}
	}
	// The subscription itself survived too.
	pub = dialV5(t, b.addr, "pub2", true, 0)
	if _, err := pub.publish("q/y", []byte("after"), 1, false); err != nil {
		t.Fatal(err)
	}
	if m := sub.next(t); string(m.Payload) != "after" {
		t.Fatalf("got %q after restart, want \"after\"", m.Payload)
	}
	// The offline v3 session queued the new message as well; wait for the
	// fan-out, which runs after the publisher's PUBACK.
	waitFor(t, "v3 queue after restart", func() bool {
		cl, ok := b.srv.Clients.Get("v3sub")
		return ok && cl.State.Inflight.Len() == 4
	})
	v3sub, err = dialRaw(b.addr, "v3sub", false)
	if err != nil {
		t.Fatal(err)
	}
	defer v3sub.Close()
	seen := 0
	for seen < 4 {
		pk, err := v3sub.Next(testDeadline)
		if err != nil {
			t.Fatalf("v3 session: %v after %d messages", err, seen)
		}
		if pk.FixedHeader.Type == packets.Publish {
			seen++
			if pk.FixedHeader.Qos == 1 {
				v3sub.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}
		}
	}
}

func TestCleanSessionNotStored(t *testing.T) {
	dir := t.TempDir()
	b := startBroker(t, openStore(t, dir, Options{}))
	c := dialV5(t, b.addr, "c", true, 3600)
	c.subscribe(t, "a", 1)
	// Reconnecting without an expiry drops the stored session.
	c.c.Disconnect(&paho.Disconnect{})
	waitFor(t, "offline", func() bool { cl, ok := b.srv.Clients.Get("c"); return ok && cl.Closed() })
	c = dialV5(t, b.addr, "c", true, 0)
	v3, err := dialRaw(b.addr, "v3clean", true)
	if err != nil {
		t.Fatal(err)
	}
	v3.Close()
	b.stop(t)
	b = startBroker(t, openStore(t, dir, Options{}))
	if b.stats.Clients != 0 || b.stats.Subscriptions != 0 {
		t.Fatalf("restored %+v, want no sessions", b.stats)
	}
}

// Expiry: a v5 message's own expiry survives restarts; expired ones are
// not restored and are removed from disk; v3 messages never expire.
func TestRetainedExpiry(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	now := time.Now().Unix()
	msgs := []packets.Packet{
		{TopicName: "v5/expired", ProtocolVersion: 5, Created: now - 100, Expiry: now - 10},
		{TopicName: "v5/later", ProtocolVersion: 5, Created: now, Expiry: now + 3600,
			Properties: packets.Properties{MessageExpiryInterval: 3600}},
		{TopicName: "v3/old", ProtocolVersion: 4, Created: now - 1e6, Expiry: now - 10},
		{TopicName: "v5/none", ProtocolVersion: 5, Created: now - 1e6},
	}
	for i := range msgs {
		msgs[i].FixedHeader = packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: 1}
		msgs[i].Payload = []byte("p")
		if err := st.saveRetained(msgs[i].TopicName, &msgs[i], true); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	for round := range 2 {
		st = openStore(t, dir, Options{})
		srv := newServer()
		stats, err := st.Restore(srv)
		if err != nil {
			t.Fatal(err)
		}
		wantExpired := 1 - round // deleted from disk in the first round
		if stats.Retained != 3 || stats.Expired != wantExpired {
			t.Fatalf("round %d: %+v", round, stats)
		}
		if _, ok := srv.Topics.Retained.Get("v5/expired"); ok {
			t.Fatal("expired message restored")
		}
		pk, _ := srv.Topics.Retained.Get("v5/later")
		if pk.Expiry != now+3600 || pk.Created != now {
			t.Fatalf("expiry not kept: created %d expiry %d", pk.Created, pk.Expiry)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDamagedStore(t *testing.T) {
	t.Run("not a database", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "moat.db"), bytes.Repeat([]byte("garbage!"), 4096), 0o600); err != nil {
			t.Fatal(err)
		}
		root, _ := os.OpenRoot(dir)
		defer root.Close()
		_, err := Open(Options{Root: root})
		if err == nil || !strings.Contains(err.Error(), "moat.db") {
			t.Fatalf("err = %v, want an error naming moat.db", err)
		}
	})
	cases := []struct {
		name    string
		damage  func(tx *bolt.Tx) error
		wantErr string
		atOpen  bool
	}{
		{"bad retained record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketRetained).Put([]byte("some/topic"), []byte{3, 0, 1})
		}, `bucket "retained" record "some/topic": truncated record`, false},
		{"topic differs from key", func(tx *bolt.Tx) error {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "b", Payload: []byte("x")}
			return tx.Bucket(bucketRetained).Put([]byte("a"), appendMessage(nil, &pk))
		}, `record "a": record topic differs`, false},
		{"bad client record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketClients).Put([]byte("dev1"), []byte{0xff})
		}, `bucket "clients" record "dev1"`, false},
		{"bad subscription key", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketSubs).Put([]byte{50, 'x'}, []byte{0, 0, 0, 0})
		}, `bucket "subs"`, false},
		{"unknown schema", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keySchema, []byte{9})
		}, "unsupported schema version 9", true},
		{"missing bucket", func(tx *bolt.Tx) error {
			return tx.DeleteBucket(bucketInflight)
		}, `bucket "inflight" missing`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			openStore(t, dir, Options{}).Close()
			db, err := bolt.Open(filepath.Join(dir, "moat.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(c.damage); err != nil {
				t.Fatal(err)
			}
			db.Close()
			root, _ := os.OpenRoot(dir)
			defer root.Close()
			st, err := Open(Options{Root: root})
			if err == nil {
				defer st.Close()
				_, err = st.Restore(newServer())
			} else if !c.atOpen {
				t.Fatalf("Open: %v", err)
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "moat.db") {
				t.Fatalf("err = %v, want it to name moat.db and contain %q", err, c.wantErr)
			}
		})
	}
}

// The database can only be reached through the directory handle.
func TestOpenNeedsRoot(t *testing.T) {
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open without Root succeeded")
	}
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := Open(Options{Root: root, File: "../escape.db"}); err == nil {
		t.Fatal("Open outside Root succeeded")
	}
}

// QoS 0 retained messages are committed within the flush bound without
// anyone waiting; Close flushes what is still queued.
func TestQoS0FlushAndClose(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{QoS0Flush: 20 * time.Millisecond})
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: "t0", Payload: []byte("v")}
	if err := st.saveRetained("t0", &pk, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "qos0 commit", func() bool {
		var found bool
		st.db.View(func(tx *bolt.Tx) error { found = tx.Bucket(bucketRetained).Get([]byte("t0")) != nil; return nil })
		return found
	})
	pk.TopicName = "t1"
	st.saveRetained("t1", &pk, false)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir, Options{})
	defer st.Close()
	srv := newServer()
	if stats, err := st.Restore(srv); err != nil || stats.Retained != 2 {
		t.Fatalf("restore %+v %v", stats, err)
	}
	if err := st.saveRetained("x", &pk, true); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := st.saveRetained("x", &pk, true); err != ErrClosed {
		t.Fatalf("write after Close: %v", err)
	}
}
