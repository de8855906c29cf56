package store

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

func retained(topic, payload string, qos byte) packets.Packet {
	return packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: qos},
		TopicName:       topic,
		Payload:         []byte(payload),
		ProtocolVersion: 4,
	}
}

func restoredRetained(t *testing.T, dir string) map[string]packets.Packet {
	t.Helper()
	st := openStore(t, dir, Options{})
	defer st.Close()
	srv := newServer()
	if _, err := st.Restore(srv); err != nil {
		t.Fatal(err)
	}
	return srv.Topics.Retained.GetAll()
}

func TestImportRetained(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	v5 := retained("v5/props", "{}", 1)
	v5.ProtocolVersion = 5
	v5.Created, v5.Expiry = 1000, 4000000000
	v5.Properties = packets.Properties{
		ContentType: "application/json", PayloadFormat: 1, PayloadFormatFlag: true,
		ResponseTopic: "r", CorrelationData: []byte{0, 1},
		User: []packets.UserProperty{{Key: "k", Val: "v"}},
	}
	res, err := st.ImportRetained([]packets.Packet{retained("a", "1", 0), v5}, false)
	if err != nil || res.Imported != 2 || res.Kept != nil || res.Replaced != nil {
		t.Fatalf("first import: %+v %v", res, err)
	}
	res, err = st.ImportRetained([]packets.Packet{retained("a", "2", 2), retained("b", "3", 1)}, false)
	if err != nil || res.Imported != 1 || !reflect.DeepEqual(res.Kept, []string{"a"}) {
		t.Fatalf("import without replace: %+v %v", res, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	got := restoredRetained(t, dir)
	if len(got) != 3 || string(got["a"].Payload) != "1" || string(got["b"].Payload) != "3" {
		t.Fatalf("after keep: %v", got)
	}
	p := got["v5/props"]
	if p.Expiry != v5.Expiry || p.Created != v5.Created || p.FixedHeader.Qos != 1 || !p.FixedHeader.Retain ||
		!reflect.DeepEqual(p.Properties, v5.Properties) {
		t.Fatalf("v5 message changed: %+v", p)
	}

	st = openStore(t, dir, Options{})
	res, err = st.ImportRetained([]packets.Packet{retained("a", "2", 2)}, true)
	if err != nil || res.Imported != 0 || !reflect.DeepEqual(res.Replaced, []string{"a"}) {
		t.Fatalf("import with replace: %+v %v", res, err)
	}
	st.Close()
	if got := restoredRetained(t, dir); string(got["a"].Payload) != "2" || got["a"].FixedHeader.Qos != 2 {
		t.Fatalf("after replace: %+v", got["a"])
	}
}

// A message the database refuses (a key above bbolt's 32 KiB) fails the
// whole import: nothing before it is kept.
func TestImportAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	msgs := []packets.Packet{retained("a", "1", 0), retained("b", "2", 1), retained(strings.Repeat("x", 40000), "3", 0)}
	if res, err := st.ImportRetained(msgs, false); err == nil {
		t.Fatalf("import of a 40000-byte topic succeeded: %+v", res)
	}
	for _, bad := range [][]packets.Packet{
		{retained("a", "1", 0), retained("a", "2", 0)},
		{retained("a", "", 0)},
		{retained("", "1", 0)},
		{retained("a", "1", 3)},
	} {
		if _, err := st.ImportRetained(bad, true); err == nil {
			t.Errorf("import of %+v succeeded", bad)
		}
	}
	// The store stays usable.
	if res, err := st.ImportRetained(msgs[:1], false); err != nil || res.Imported != 1 {
		t.Fatalf("import after a failed one: %+v %v", res, err)
	}
	st.Close()
	if got := restoredRetained(t, dir); len(got) != 1 {
		t.Fatalf("retained after a failed import: %v", got)
	}
}

// A second opener (a running broker holds the lock) gets ErrInUse.
func TestOpenInUse(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir, Options{})
	defer st.Close()
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	_, err = Open(Options{Root: r})
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
}
