package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/moattest/brokertest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// Files written by mosquitto 2.0.11 (see that directory's README).
const mosqTestdata = "../../internal/mosqdb/testdata/"

// importSetup writes a configuration with an unencrypted store and
// returns its path and the port its listener will use.
func importSetup(t *testing.T, extra ...string) (conf string, port int) {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	lines := append([]string{
		fmt.Sprintf("listener %d 127.0.0.1", port),
		"allow_anonymous true",
		"admin_listener off",
		"persistence true",
		"persistence_location " + filepath.Join(dir, "store"),
		"persistence_encryption off",
	}, extra...)
	conf = filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf, port
}

// storedRetained opens the store as the broker does and counts its
// retained messages.
func storedRetained(t *testing.T, conf string) int {
	t.Helper()
	cfg, err := config.Load(conf, os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	st, err := broker.OpenStore(broker.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	return st.Retained()
}

func startBroker(t *testing.T, conf string) *broker.Broker {
	t.Helper()
	return brokertest.RunFile(t, conf, brokertest.Options{Env: os.Getenv}).Broker
}

// The retained messages mosquitto 2.0.11 wrote reach subscribers of Moat
// with their QoS, payload bytes, MQTT 5 properties and remaining expiry;
// the one that expired before the import is left out.
func TestImportMosquittoDB(t *testing.T) {
	conf, port := importSetup(t)
	code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, mosqTestdata+"mosquitto-2.0.11.db")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"7 retained messages (mosquitto format 6), 1 expired (skipped)",
		"not imported: 1 sessions, 1 subscriptions", "imported 6 retained messages into"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b := startBroker(t, conf)
	defer b.Close(context.Background())
	c, ack, err := mqtttest.Dial(fmt.Sprintf("127.0.0.1:%d", port), mqtttest.Options{ClientID: "reader", Version: 5, KeepAlive: 60, AutoAck: true})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v %v", err, ack.ReasonCode)
	}
	defer c.Close()
	c.MustSubscribe(t, 2, "#")
	want := map[string]struct {
		qos     byte
		payload []byte
	}{
		"sensors/q0": {0, []byte("qos zero")}, "sensors/q1": {1, []byte("qos one")}, "sensors/q2": {2, []byte("qos two")},
		"v5/props": {1, []byte(`{"t":21.5}`)}, "v5/expiring": {1, []byte("long-lived")},
		"bin/blob": {1, []byte{0x00, 0x01, 0xff, 0xfe, ' ', 'b', 'i', 'n', 0x00, 0x80, '\n', 0x7f}},
	}
	for topic, w := range want {
		if !c.WaitTopic(topic) {
			t.Fatalf("%s not delivered; got %v", topic, c.Topics())
		}
		m, _ := c.Message(topic)
		if m.FixedHeader.Qos != w.qos || !bytes.Equal(m.Payload, w.payload) || !m.FixedHeader.Retain {
			t.Errorf("%s: qos %d retain %v payload %q, want %d true %q", topic, m.FixedHeader.Qos, m.FixedHeader.Retain, m.Payload, w.qos, w.payload)
		}
	}
	p, _ := c.Message("v5/props")
	pp := p.Properties
	if pp.ContentType != "application/json" || pp.ResponseTopic != "v5/reply" || string(pp.CorrelationData) != "abc123" ||
		!pp.PayloadFormatFlag || pp.PayloadFormat != 1 || len(pp.User) != 2 || pp.User[0] != (packets.UserProperty{Key: "site", Val: "lab"}) ||
		pp.User[1] != (packets.UserProperty{Key: "k 2", Val: "v=2"}) || pp.MessageExpiryInterval != 0 {
		t.Errorf("v5/props properties: %+v", pp)
	}
	e, _ := c.Message("v5/expiring")
	if e.Properties.MessageExpiryInterval == 0 || e.Properties.MessageExpiryInterval > 2000000000 {
		t.Errorf("v5/expiring: expiry interval %d, want the rest of 2000000000 s", e.Properties.MessageExpiryInterval)
	}
	if extra := c.QuietFor(200 * time.Millisecond); len(c.Topics()) != len(want) {
		t.Errorf("delivered %v (then %v), want %d topics", c.Topics(), extra, len(want))
	}
}

// A second import keeps what the store holds unless -replace is given.
func TestImportKeepsOrReplaces(t *testing.T) {
	conf, _ := importSetup(t)
	db := mosqTestdata + "mosquitto-2.0.11.db"
	if code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, db); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ := runCLI(t, "import", "mosquitto-db", "-c", conf, db)
	if code != 0 || !strings.Contains(out, "imported 0 retained messages") ||
		!strings.Contains(out, "kept 6 topics the store already held (-replace overwrites them)") || !strings.Contains(out, `"bin/blob"`) {
		t.Fatalf("second import: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "import", "mosquitto-db", "-c", conf, "-replace", db)
	if code != 0 || !strings.Contains(out, "imported 6 retained messages") || !strings.Contains(out, "replaced 6 topics") {
		t.Fatalf("import -replace: exit %d\n%s", code, out)
	}
	if n := storedRetained(t, conf); n != 6 {
		t.Fatalf("store holds %d retained messages, want 6", n)
	}
}

// A damaged file imports nothing, even though most of it is readable,
// and the error names the file and the offset.
func TestImportBrokenFilesImportNothing(t *testing.T) {
	for _, tc := range []struct{ file, reason string }{
		{"empty.db", "offset 0: empty file"},
		{"truncated.db", "(truncated file?)"},
		{"corrupt.db", "offset 55: message"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			conf, _ := importSetup(t)
			path := mosqTestdata + tc.file
			code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, path)
			if code != 1 || !strings.Contains(errOut, "moat: nothing imported: "+path+": offset ") || !strings.Contains(errOut, tc.reason) {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			if n := storedRetained(t, conf); n != 0 {
				t.Fatalf("store holds %d retained messages after a failed import", n)
			}
		})
	}
}

// The import refuses a store a running broker holds, and says so.
func TestImportRefusedWhileServing(t *testing.T) {
	conf, _ := importSetup(t)
	b := startBroker(t, conf)
	code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, mosqTestdata+"mosquitto-2.0.11.db")
	if code != 1 || !strings.Contains(errOut, "refusing to import while the store is in use: stop moat serve") ||
		!strings.Contains(errOut, "is moat serve running on this store?") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if _, ok := b.Server().Topics.Retained.Get("sensors/q0"); ok {
		t.Fatal("the running broker got an imported message")
	}
}

// With an ACL that gives each user only their own tree, the import names
// the topics nobody will be able to read; -n writes nothing.
func TestImportNamesUnreadableTopics(t *testing.T) {
	dir, conf, _ := cliSetup(t, "", "pattern readwrite %u/#\nuser alice\ntopic read sensors/q0\n")
	store := filepath.Join(dir, "store")
	conf = filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte("listener 1883 127.0.0.1\nadmin_listener off\npassword_file passwd\nacl_file acl\n"+
		"persistence true\npersistence_encryption off\npersistence_location "+store+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "import", "mosquitto-db", "-n", "-c", conf, mosqTestdata+"mosquitto-2.0.11.db")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "warning: no user of this configuration may read 5 of these topics") || strings.Contains(out, `"sensors/q0"`) ||
		!strings.Contains(out, `"sensors/q1"`) || !strings.Contains(out, `"bin/blob"`) || !strings.Contains(out, "dry run (-n): nothing written") {
		t.Fatalf("output:\n%s", out)
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("dry run created the store: %v", err)
	}
}

func TestImportUsage(t *testing.T) {
	conf, _ := importSetup(t)
	for _, args := range [][]string{
		{"import"},
		{"import", "mosquitto"},
		{"import", "mosquitto-db", mosqTestdata + "mosquitto-2.0.11.db"},
		{"import", "mosquitto-db", "-c", conf},
		{"import", "mosquitto-db", "-c", conf, "a.db", "b.db"},
		{"import", "mosquitto-db", "-c", conf, "-cipher-dir", "/nonexistent"},
	} {
		if code, _, errOut := runCLI(t, args...); code != 2 || !strings.Contains(errOut, "usage: moat import mosquitto-db") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	code, _, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, "/nonexistent/mosquitto.db")
	if code != 1 || !strings.Contains(errOut, "nothing imported") || !strings.Contains(errOut, "/nonexistent/mosquitto.db") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}
}

// mosquittoDB builds a version 6 mosquitto.db holding retained messages
// (topic → payload), laid out as mosquitto 2.0 writes it.
func mosquittoDB(t *testing.T, msgs map[string]string) string {
	t.Helper()
	real, err := os.ReadFile(mosqTestdata + "mosquitto-2.0.11.db")
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(real[:23+8+16]) // header and config chunk
	chunk := func(typ uint32, body []byte) {
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
	}
	var id uint64
	for topic, payload := range msgs {
		id++
		f := make([]byte, 32)
		binary.LittleEndian.PutUint64(f, id)
		binary.BigEndian.PutUint32(f[16:], uint32(len(payload)))
		binary.BigEndian.PutUint16(f[26:], uint16(len(topic)))
		f[31] = 1
		chunk(2, append(append(f, topic...), payload...))
		chunk(4, binary.LittleEndian.AppendUint64(nil, id))
	}
	p := filepath.Join(t.TempDir(), "mosquitto.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Hostile topics are listed quoted and escaped, never raw; a topic too
// long for the store fails the whole import.
func TestImportHostileTopics(t *testing.T) {
	dir, _, _ := cliSetup(t, "", "pattern readwrite %u/#\n")
	conf := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(conf, []byte("listener 1883 127.0.0.1\nadmin_listener off\npassword_file passwd\nacl_file acl\n"+
		"persistence true\npersistence_encryption off\npersistence_location "+filepath.Join(dir, "store")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	evil := "x\x1b[31m\"quoted\" ip=1.2.3.4\nmsg=\"forged\"\r\x7f"
	db := mosquittoDB(t, map[string]string{evil: "1", "alice/ok": "2", strings.Repeat("long/", 8000): "3"})
	code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, db)
	if code != 1 || !strings.Contains(errOut, "nothing imported") || !strings.Contains(errOut, "key too large") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if strings.Contains(out, "\x1b") || strings.Contains(out, "\r") || strings.Contains(out, "\nmsg=") ||
		!strings.Contains(out, `"x\x1b[31m\"quoted\" ip=1.2.3.4\nmsg=\"forged\"\r\x7f"`) {
		t.Fatalf("hostile topic not escaped:\n%q", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if len(line) > 300 {
			t.Errorf("output line of %d bytes: %.80q...", len(line), line)
		}
	}
	if !strings.Contains(out, `..." (40000 bytes)`) && !strings.Contains(out, `... (40000 bytes)`) {
		t.Errorf("long topic not shortened:\n%.2000s", out)
	}
	if n := storedRetained(t, conf); n != 0 {
		t.Fatalf("store holds %d retained messages after a failed import", n)
	}
}

// Imports racing for one store: each imports everything or is refused
// because another holds the store; nothing is lost or doubled.
func TestImportConcurrent(t *testing.T) {
	conf, _ := importSetup(t)
	msgs := map[string]string{}
	for i := range 1000 {
		msgs[fmt.Sprintf("site/%d/state", i)] = strings.Repeat("v", i%64+1)
	}
	db := mosquittoDB(t, msgs)
	const n = 20
	codes := make(chan string, n)
	for range n {
		go func() {
			code, out, errOut := runCLI(t, "import", "mosquitto-db", "-c", conf, db)
			switch {
			case code == 0 && (strings.Contains(out, "imported 1000 retained") || strings.Contains(out, "kept 1000 topics")):
				codes <- "ok"
			case code == 1 && strings.Contains(errOut, "refusing to import while the store is in use"):
				codes <- "refused"
			default:
				codes <- fmt.Sprintf("exit %d: %s%s", code, out, errOut)
			}
		}()
	}
	ok := 0
	for range n {
		switch r := <-codes; r {
		case "ok":
			ok++
		case "refused":
		default:
			t.Error(r)
		}
	}
	if ok == 0 {
		t.Fatal("no import succeeded")
	}
	if got := storedRetained(t, conf); got != 1000 {
		t.Fatalf("store holds %d retained messages, want 1000", got)
	}
}
