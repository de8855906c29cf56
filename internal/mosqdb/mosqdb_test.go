package mosqdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	fixture          = "testdata/mosquitto-2.0.11.db"
	fixtureTruncated = "testdata/truncated.db"
	fixtureCorrupt   = "testdata/corrupt.db"
	fixtureEmpty     = "testdata/empty.db"
)

// truncate and corrupt derive the broken fixtures from a real file.
func truncated(real []byte) []byte { return real[:len(real)-5] }

func corrupt(real []byte) []byte {
	b := bytes.Clone(real)
	// The first chunk after the config chunk is a message: claim a topic
	// far longer than the chunk.
	msg := headerLen + chunkHdrLen + cfgLen
	binary.BigEndian.PutUint16(b[msg+chunkHdrLen+26:], 0xffff)
	return b
}

type want struct {
	qos     byte
	payload string
	props   Properties
	expiry  uint32 // the published expiry interval; mosquitto stores it as an absolute time
}

var wantRetained = map[string]want{
	"sensors/q0": {qos: 0, payload: "qos zero"},
	"sensors/q1": {qos: 1, payload: "qos one"},
	"sensors/q2": {qos: 2, payload: "qos two"},
	"v5/props": {qos: 1, payload: `{"t":21.5}`, props: Properties{
		PayloadFormat: 1, PayloadFormatSet: true, ContentType: "application/json",
		ResponseTopic: "v5/reply", CorrelationData: []byte("abc123"),
		User: []UserProperty{{"site", "lab"}, {"k 2", "v=2"}},
	}},
	"v5/expiring": {qos: 1, payload: "long-lived", expiry: longExpiry},
	"v5/expired":  {qos: 0, payload: "gone in a second", expiry: 1},
	"bin/blob":    {qos: 1, payload: string(binaryPayload)},
}

// checkReal asserts what mosquittoScript put into a file.
func checkReal(t *testing.T, db *DB) {
	t.Helper()
	if db.Version != 6 {
		t.Errorf("version %d, want 6", db.Version)
	}
	got := map[string]Message{}
	for _, m := range db.Retained {
		got[m.Topic] = m
	}
	if len(got) != len(wantRetained) || len(db.Retained) != len(wantRetained) {
		t.Errorf("retained topics %v, want %d", keys(got), len(wantRetained))
	}
	for topic, w := range wantRetained {
		m, ok := got[topic]
		if !ok {
			t.Errorf("%s missing", topic)
			continue
		}
		if m.QoS != w.qos || string(m.Payload) != w.payload {
			t.Errorf("%s: qos %d payload %q, want %d %q", topic, m.QoS, m.Payload, w.qos, w.payload)
		}
		if !reflect.DeepEqual(m.Properties, w.props) {
			t.Errorf("%s: properties %+v, want %+v", topic, m.Properties, w.props)
		}
		if (m.Expiry != 0) != (w.expiry != 0) {
			t.Errorf("%s: expiry %d, want set=%v", topic, m.Expiry, w.expiry != 0)
		}
		if w.expiry != 0 && m.Expiry-int64(w.expiry) > time.Now().Unix() {
			t.Errorf("%s: expiry %d lies beyond now + %d s", topic, m.Expiry, w.expiry)
		}
		if topic == "v5/expired" && m.Expiry >= time.Now().Unix() {
			t.Errorf("%s: expiry %d has not passed", topic, m.Expiry)
		}
		if m.SourceID == "" {
			t.Errorf("%s: no source client id", topic)
		}
	}
	if db.Sessions != 1 || db.Subscriptions != 1 || db.Queued == 0 {
		t.Errorf("sessions %d subscriptions %d queued %d, want 1 1 >0", db.Sessions, db.Subscriptions, db.Queued)
	}
}

func keys(m map[string]Message) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestRealMosquitto parses what the installed mosquitto writes now.
func TestRealMosquitto(t *testing.T) {
	data := WriteWithMosquitto(t, mosquittoScript)
	db, err := Parse("fresh.db", data)
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, db)
	if *update {
		for name, b := range map[string][]byte{
			fixture: data, fixtureTruncated: truncated(data), fixtureCorrupt: corrupt(data), fixtureEmpty: nil,
		} {
			if err := os.WriteFile(name, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFixture parses the committed file written by mosquitto 2.0.11.
func TestFixture(t *testing.T) {
	db, err := ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	checkReal(t, db)
}

func TestBrokenFiles(t *testing.T) {
	real, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	withChunk := func(typ uint32, body []byte) []byte {
		b := bytes.Clone(real[:headerLen+chunkHdrLen+cfgLen])
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		return append(b, body...)
	}
	msg := func(topic string, payload []byte, props []byte, qos byte) []byte {
		b := make([]byte, msgFixedLen)
		binary.LittleEndian.PutUint64(b, 7)
		binary.BigEndian.PutUint32(b[16:], uint32(len(payload)))
		binary.BigEndian.PutUint16(b[26:], uint16(len(topic)))
		b[30], b[31] = qos, 1
		b = append(append(append(b, topic...), payload...), props...)
		return b
	}
	header := bytes.Clone(real[:headerLen])
	badVersion := bytes.Clone(header)
	binary.BigEndian.PutUint32(badVersion[19:], 7)
	hugeChunk := withChunk(chunkMsgStore, nil)
	binary.BigEndian.PutUint32(hugeChunk[len(hugeChunk)-4:], 0xffffffff)
	for _, tc := range []struct {
		name, file string
		data       []byte
		reason     string
		offset     int
	}{
		{"empty", fixtureEmpty, nil, "empty file", 0},
		{"truncated", fixtureTruncated, nil, "exceeds the 3 bytes left (truncated file?)", len(real) - 16},
		{"corrupt", fixtureCorrupt, nil, "fields need", headerLen + chunkHdrLen + cfgLen + chunkHdrLen},
		{"not mosquitto", "x.db", []byte("SQLite format 3\x00 and more bytes"), "bad magic", 0},
		{"short magic", "x.db", magic[:5], "truncated header", 5},
		{"header only", "x.db", header, "no config chunk", headerLen},
		{"version 7", "x.db", badVersion, "format version 7 not supported", 19},
		{"half chunk header", "x.db", append(bytes.Clone(header), 0, 0, 0), "truncated chunk header", headerLen},
		{"chunk length 4 GiB", "x.db", hugeChunk, "exceeds the 0 bytes left", headerLen + chunkHdrLen + cfgLen},
		{"message before config", "x.db", append(append(bytes.Clone(header), 0, 0, 0, 4, 0, 0, 0, 8), make([]byte, 8)...), "before the config chunk", headerLen},
		{"qos 3", "x.db", withChunk(chunkMsgStore, msg("a", []byte("x"), nil, 3)), "QoS 3", 0},
		{"wildcard topic", "x.db", withChunk(chunkMsgStore, msg("a/#", []byte("x"), nil, 0)), "wildcard", 0},
		{"bad utf-8 topic", "x.db", withChunk(chunkMsgStore, msg("a\xff", []byte("x"), nil, 0)), "UTF-8", 0},
		{"property length lies", "x.db", withChunk(chunkMsgStore, msg("a", []byte("x"), []byte{5, 1, 1}, 0)), "block length 5", 0},
		{"unknown property", "x.db", withChunk(chunkMsgStore, msg("a", []byte("x"), []byte{2, 0x11, 0}, 0)), "not a PUBLISH property", 0},
		{"duplicate content type", "x.db", withChunk(chunkMsgStore, msg("a", []byte("x"), []byte{6, 3, 0, 0, 3, 0, 0}, 0)), "appears twice", 0},
		{"user property too long", "x.db", withChunk(chunkMsgStore, msg("a", []byte("x"), []byte{4, 0x26, 0xff, 0xff, 0}, 0)), "exceeds", 0},
		{"retain of length 3", "x.db", withChunk(chunkRetain, []byte{1, 2, 3}), "retain chunk: length 3", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var db *DB
			var err error
			if tc.data == nil {
				db, err = ReadFile(tc.file)
			} else {
				db, err = Parse(tc.file, tc.data)
			}
			if err == nil || db != nil {
				t.Fatalf("got %v, %v; want an error and nothing", db, err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if !strings.Contains(err.Error(), tc.reason) || !strings.HasPrefix(err.Error(), tc.file+": offset ") {
				t.Errorf("error %q, want %q naming %s", err, tc.reason, tc.file)
			}
			if tc.offset != 0 && e.Offset != tc.offset {
				t.Errorf("offset %d, want %d", e.Offset, tc.offset)
			}
		})
	}
	if _, err := ReadFile(fixtureEmpty); !errors.Is(err, ErrEmpty) {
		t.Errorf("empty file: %v, want ErrEmpty", err)
	}
}

// A retain chunk whose message is gone (expired before the save) is
// skipped as mosquitto skips it; a topic retained twice is refused.
func TestRetainReferences(t *testing.T) {
	real, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	dangling := append(bytes.Clone(real), 0, 0, 0, 4, 0, 0, 0, 8, 0xee, 0xee, 0, 0, 0, 0, 0, 0)
	db, err := Parse("d.db", dangling)
	if err != nil || db.Dangling != 1 || len(db.Retained) != len(wantRetained) {
		t.Fatalf("dangling retain: %v %+v", err, db)
	}
	last := real[len(real)-16:]
	twice := append(bytes.Clone(real), last...)
	if _, err := Parse("t.db", twice); err == nil || !strings.Contains(err.Error(), "retained twice") {
		t.Fatalf("retained twice: %v", err)
	}
	unknown := append(bytes.Clone(real), 0, 0, 0, 99, 0, 0, 0, 2, 1, 2)
	if db, err := Parse("u.db", unknown); err != nil || db.Unknown != 1 {
		t.Fatalf("unknown chunk: %v %+v", err, db)
	}
}

// Every truncation of a real file is refused or parsed; none panics, and
// only the whole file yields every message.
func TestEveryTruncation(t *testing.T) {
	real, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(real); n++ {
		db, err := Parse("t.db", real[:n])
		if err == nil && len(db.Retained) == len(wantRetained) {
			t.Fatalf("prefix of %d bytes yields every message", n)
		}
		if (err == nil) == (db == nil) {
			t.Fatalf("prefix %d: db %v with error %v", n, db, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{fixture, fixtureTruncated, fixtureCorrupt} {
		b, err := os.ReadFile(filepath.FromSlash(name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		db, err := Parse("fuzz.db", data)
		if err != nil {
			// An error returns nothing.
			if db != nil {
				t.Fatalf("error %v with a result", err)
			}
			var e *Error
			if !errors.As(err, &e) || e.Offset < 0 || e.Offset > len(data) {
				t.Fatalf("error %v: not an *Error within the file", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, m := range db.Retained {
			if m.Topic == "" || seen[m.Topic] || len(m.Payload) == 0 || m.QoS > 2 {
				t.Fatalf("bad message %+v", m)
			}
			seen[m.Topic] = true
		}
	})
}

// The message count is capped: a file of tiny chunks cannot make the
// parser hold millions of entries.
func TestMessageCap(t *testing.T) {
	real, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	p := parser{name: "many.db", b: real, maxMessages: 3}
	if db, err := p.parse(); err == nil || db != nil || !strings.Contains(err.Error(), "more than 3 messages") {
		t.Fatalf("%v %v", db, err)
	}
	p = parser{name: "ok.db", b: real, maxMessages: 100}
	if _, err := p.parse(); err != nil {
		t.Fatal(err)
	}
}

// A store far bigger than the fixtures (100000 retained messages, a
// 65535-byte topic) parses whole.
func TestManyMessages(t *testing.T) {
	real, err := os.ReadFile(fixture)
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(real[:headerLen+chunkHdrLen+cfgLen])
	chunk := func(typ uint32, body []byte) {
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
	}
	const n = 100000
	long := strings.Repeat("t", 65535)
	for i := range n {
		topic := "site/" + strconv.Itoa(i)
		if i == 0 {
			topic = long
		}
		f := make([]byte, msgFixedLen)
		binary.LittleEndian.PutUint64(f, uint64(i+1))
		binary.BigEndian.PutUint32(f[16:], 1)
		binary.BigEndian.PutUint16(f[26:], uint16(len(topic)))
		f[30], f[31] = byte(i%3), 1
		chunk(chunkMsgStore, append(append(f, topic...), 'x'))
		chunk(chunkRetain, binary.LittleEndian.AppendUint64(nil, uint64(i+1)))
	}
	db, err := Parse("big.db", b)
	if err != nil {
		t.Fatal(err)
	}
	if len(db.Retained) != n || db.Retained[0].Topic != long || db.Retained[n-1].QoS != byte((n-1)%3) {
		t.Fatalf("%d messages", len(db.Retained))
	}
}
