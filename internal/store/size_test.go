package store

import (
	"strings"
	"testing"
)

// TestOversizedRecordsDoNotPoisonTheStore: with nothing in front of the
// store, a retained topic, a client id and a filter over bbolt's 32 KiB
// key limit fail only their own write; the store stays healthy and every
// other client's retained publishes are still saved and acknowledged.
func TestOversizedRecordsDoNotPoisonTheStore(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	b := startBroker(t, st)
	huge := strings.Repeat("x", 40<<10)

	good, err := dialRaw(b.addr, "good", true)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := publishQoS1(good, "keep/before", []byte("v"), true); err != nil {
		t.Fatal(err)
	}

	// A retained publish on a 40 KiB topic.
	bad, err := dialRaw(b.addr, "bad", true)
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := publishQoS1(bad, "t/"+huge, []byte("poison"), true); err == nil {
		t.Error("a retained message the store cannot hold was acknowledged")
	}
	if _, ok := b.srv.Topics.Retained.Get("t/" + huge); ok {
		t.Error("the unsaved retained message is still held in memory")
	}

	// A persistent session with a 40 KiB client id, and one subscribing to
	// a 40 KiB filter: their records are dropped, nothing else.
	if c, err := dialRaw(b.addr, "id-"+huge, false); err == nil {
		c.Close()
	}
	sub, err := dialRaw(b.addr, "sub", false)
	if err != nil {
		t.Fatal(err)
	}
	sub.Subscribe(t, 1, "f/"+huge)
	sub.Subscribe(t, 1, "f/small")
	sub.Close()

	for i, topic := range []string{"keep/after", "keep/later"} {
		if err := publishQoS1(good, topic, []byte("v"), true); err != nil {
			t.Fatalf("publish %d after the oversized records: %v", i, err)
		}
	}
	if err := st.Healthy(); err != nil {
		t.Fatalf("store unhealthy after oversized records: %v", err)
	}

	b.stop(t)
	b = startBroker(t, openStore(t, dir, Options{}))
	for _, tp := range []string{"keep/before", "keep/after", "keep/later"} {
		if _, ok := b.srv.Topics.Retained.Get(tp); !ok {
			t.Errorf("retained %s lost", tp)
		}
	}
	cl, ok := b.srv.Clients.Get("sub")
	if !ok {
		t.Fatal("the session of sub was lost")
	}
	if _, ok := cl.State.Subscriptions.Get("f/small"); !ok {
		t.Error("sub's valid subscription was lost")
	}
}

func TestCheckRecord(t *testing.T) {
	for _, tt := range []struct {
		key, val int
		ok       bool
	}{
		{1, 0, true},
		{32768, 100, true},
		{0, 1, false},
		{32769, 0, false},
	} {
		err := checkRecord(make([]byte, tt.key), make([]byte, tt.val))
		if (err == nil) != tt.ok {
			t.Errorf("key %d val %d: %v", tt.key, tt.val, err)
		}
	}
}
