package e2e

// Encrypted, durable persistence through the real binary and a real
// gocryptfs mount: crashes, a dying mount, a full disk, bad keys and
// configurations, and restarts.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/internal/testenv"
)

const startTimeout = 60 * time.Second

// persistEnv is one Moat installation with encrypted persistence: fixed
// ports (they must survive a restart) and directories under t.TempDir.
type persistEnv struct {
	t                       *testing.T
	dir, cipher, plain, key string
	conf                    string
	port, adminPort         int
	addr, admin             string
	extra                   []string
}

func newPersistEnv(t *testing.T, extra ...string) *persistEnv {
	t.Helper()
	testenv.RequireFUSE(t)
	gc := GocryptfsBinary(t)
	dir := t.TempDir()
	GuardMounts(t, dir)
	e := &persistEnv{
		t:      t,
		dir:    dir,
		cipher: filepath.Join(dir, "cipher"),
		plain:  filepath.Join(dir, "plain"),
		key:    filepath.Join(dir, "key"),
		port:   FreePort(t),
		extra:  extra,
	}
	e.adminPort = FreePort(t)
	for e.adminPort == e.port {
		e.adminPort = FreePort(t)
	}
	e.addr = fmt.Sprintf("127.0.0.1:%d", e.port)
	e.admin = fmt.Sprintf("http://127.0.0.1:%d", e.adminPort)
	WriteFile(t, e.key, "correct horse battery staple "+randHex(8)+"\n", 0o600)
	lines := []string{
		fmt.Sprintf("listener %d 127.0.0.1", e.port),
		"allow_anonymous true",
		"persistence true",
		"persistence_location " + e.plain,
		"persistence_cipher_dir " + e.cipher,
		"persistence_key_file " + e.key,
		"gocryptfs_path " + gc,
		fmt.Sprintf("admin_listener 127.0.0.1:%d", e.adminPort),
	}
	e.conf = WriteConfig(t, filepath.Join(dir, "etc"), append(lines, extra...)...)
	return e
}

// start runs Moat and waits for its MQTT listener.
func (e *persistEnv) start() *Moat {
	e.t.Helper()
	m := StartMoat(e.t, e.conf, "MOAT_TEST_SCRYPTN=10")
	m.WaitTCP(e.addr, startTimeout)
	return m
}

// run runs Moat expecting it to fail on its own.
func (e *persistEnv) run() (int, string) {
	e.t.Helper()
	return RunMoat(e.t, e.conf, startTimeout, "MOAT_TEST_SCRYPTN=10")
}

var restoredRE = regexp.MustCompile(`msg="store restored" component=store file=\S+ retained=(\d+) expired=(\d+) sessions=(\d+)`)

// restored reads the counts Moat logged after restoring the store.
func restored(t testing.TB, m *Moat) (retained, sessions int) {
	t.Helper()
	sm := m.WaitOutput(restoredRE, startTimeout)
	retained, _ = strconv.Atoi(sm[1])
	sessions, _ = strconv.Atoi(sm[3])
	return retained, sessions
}

// startError is the line in which Moat says why it cannot start.
func startError(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "cannot start") {
			return l
		}
	}
	return "(no \"cannot start\" line)"
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func dial(t testing.TB, addr string, o mqtttest.Options) *mqtttest.Client {
	t.Helper()
	c, ack, err := mqtttest.Dial(addr, mqttOptions(o))
	if err != nil {
		t.Fatalf("connect %s as %q: %v", addr, o.ClientID, err)
	}
	if ack.ReasonCode != 0 {
		c.Close()
		t.Fatalf("connect as %q refused: reason 0x%02x", o.ClientID, ack.ReasonCode)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect reads until a packet of type typ arrives; other packets fail the test.
func expect(t testing.TB, c *mqtttest.Client, typ byte) packets.Packet {
	t.Helper()
	pk, err := c.Next(15 * time.Second)
	if err != nil {
		t.Fatalf("waiting for packet type %d: %v", typ, err)
	}
	if pk.FixedHeader.Type != typ {
		t.Fatalf("got packet type %d, want %d", pk.FixedHeader.Type, typ)
	}
	return pk
}

// publishQoS1 publishes and returns the PUBACK's reason code.
func publishQoS1(t testing.TB, c *mqtttest.Client, topic string, payload []byte, retain bool, id uint16) byte {
	t.Helper()
	if err := c.SendPublish(topic, payload, 1, retain, id); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	ack := expect(t, c, packets.Puback)
	if ack.PacketID != id {
		t.Fatalf("PUBACK for id %d, want %d", ack.PacketID, id)
	}
	return ack.ReasonCode
}

// collectRetained subscribes to filter and reads PUBLISHes until n arrived,
// returning topic → payload.
func collectRetained(t testing.TB, addr, filter string, n int) map[string][]byte {
	t.Helper()
	return collectStaged(t, addr, []string{filter}, nil, n)
}

// collectStaged subscribes to filters one after the other and reads until
// n retained messages arrived. Filter i+1 is subscribed once after[i]
// messages have arrived: mochi queues a subscription's retained messages
// into the client's bounded write queue (Moat: 1024) and drops what does
// not fit, so a big set is fetched in parts.
func collectStaged(t testing.TB, addr string, filters []string, after []int, n int) map[string][]byte {
	t.Helper()
	c := dial(t, addr, mqtttest.Options{ClientID: "collect-" + randHex(4)})
	defer c.Disconnect()
	got := map[string][]byte{}
	next, subacks := 0, 0
	for {
		if next < len(filters) && (next == 0 || len(got) >= after[next-1]) {
			if err := c.SendSubscribe(uint16(next+1), 0, filters[next]); err != nil {
				t.Fatal(err)
			}
			next++
		}
		if subacks == len(filters) && len(got) >= n {
			return got
		}
		pk, err := c.Next(20 * time.Second)
		if err != nil {
			t.Fatalf("after %d of %d retained messages (%d of %d filters subscribed): %v", len(got), n, next, len(filters), err)
		}
		switch pk.FixedHeader.Type {
		case packets.Suback:
			if pk.ReasonCodes[0] >= 0x80 {
				t.Fatalf("subscribe %s refused: 0x%02x", filters[pk.PacketID-1], pk.ReasonCodes[0])
			}
			subacks++
		case packets.Publish:
			if !pk.FixedHeader.Retain {
				t.Fatalf("non-retained message on %s while collecting retained ones", pk.TopicName)
			}
			if _, dup := got[pk.TopicName]; dup {
				t.Fatalf("retained message for %s delivered twice", pk.TopicName)
			}
			got[pk.TopicName] = pk.Payload
		}
	}
}

// assertNoPlaintext walks the given trees and fails if a file name or file
// content contains any marker.
func assertNoPlaintext(t testing.TB, markers []string, dirs ...string) (files int) {
	t.Helper()
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			for _, mk := range markers {
				if strings.Contains(d.Name(), mk) {
					t.Errorf("file name %s holds marker %q", p, mk)
				}
			}
			if !d.Type().IsRegular() {
				return nil
			}
			files++
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for _, mk := range markers {
				if bytes.Contains(b, []byte(mk)) {
					t.Errorf("%s holds marker %q in plain text", p, mk)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("walking %s: %v", dir, err)
		}
	}
	return files
}

// assertEmptyDir fails unless dir exists, is not mounted and is empty.
func assertEmptyDir(t testing.TB, dir string) {
	t.Helper()
	if m := MountsUnder(t, dir); len(m) > 0 {
		t.Fatalf("%s still mounted: %v", dir, m)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("mount point: %v", err)
	}
	for _, e := range ents {
		t.Errorf("plaintext written beneath the mount point: %s", filepath.Join(dir, e.Name()))
	}
}

// waitUnmounted polls until nothing is mounted at dir.
func waitUnmounted(t testing.TB, dir string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(MountsUnder(t, dir)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s still mounted %v later: %v", dir, timeout, MountsUnder(t, dir))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func gocryptfsChild(t testing.TB, m *Moat) int {
	t.Helper()
	for pid, comm := range ChildPIDs(t, m.Pid()) {
		if comm == "gocryptfs" {
			return pid
		}
	}
	t.Fatalf("moat (pid %d) has no gocryptfs child", m.Pid())
	return 0
}

func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// A zombie has exited; only its parent's wait is missing.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// stormResult is what the publishers saw acknowledged.
type stormResult struct {
	acked    map[string]int // topic → highest acknowledged sequence number
	sent     map[string]int // topic → highest sequence number written
	acks     int
	refusals int // PUBACKs with a reason code >= 0x80
}

// storm runs publishers QoS 1 retained publishers, each owning topics topics
// and publishing increasing sequence numbers with up to window messages in
// flight, until its connection breaks or stop is closed. It calls onAck
// with the running total of acknowledgements.
func storm(t *testing.T, addr, prefix string, publishers, topics, window int, stop <-chan struct{}, onAck func(total int)) *stormResult {
	res := &stormResult{acked: map[string]int{}, sent: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for p := range publishers {
		c := dial(t, addr, mqtttest.Options{ClientID: fmt.Sprintf("%s-pub-%d", prefix, p), Timeout: 30 * time.Second})
		wg.Go(func() {
			seq := 0
			next := func() (mqtttest.Msg, bool) {
				seq++
				topic := fmt.Sprintf("%s/%d/%03d", prefix, p, seq%topics)
				mu.Lock()
				res.sent[topic] = seq
				mu.Unlock()
				return mqtttest.Msg{Topic: topic, Payload: []byte(strconv.Itoa(seq)), Retain: true, Seq: seq}, true
			}
			err := c.PublishWindow(window, stop, next, func(m mqtttest.Msg, code byte) {
				mu.Lock()
				if code >= 0x80 {
					res.refusals++
				} else {
					res.acks++
					res.acked[m.Topic] = max(res.acked[m.Topic], m.Seq)
				}
				total := res.acks
				mu.Unlock()
				if onAck != nil {
					onAck(total)
				}
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	return res
}

// checkStorm compares what survived with what was acknowledged.
func checkStorm(t *testing.T, res *stormResult, got map[string][]byte, prefix string) (lost, newer int) {
	t.Helper()
	for topic, want := range res.acked {
		p, ok := got[topic]
		if !ok {
			t.Errorf("%s: acknowledged value %d lost: no retained message after restart", topic, want)
			lost++
			continue
		}
		v, err := strconv.Atoi(string(p))
		if err != nil {
			t.Errorf("%s: retained payload %q is not a sequence number", topic, p)
			continue
		}
		switch {
		case v < want:
			t.Errorf("%s: retained %d after restart, but %d was acknowledged", topic, v, want)
			lost++
		case v > res.sent[topic]:
			t.Errorf("%s: retained %d was never sent (last sent %d)", topic, v, res.sent[topic])
		case v > want:
			newer++
		}
	}
	for topic := range got {
		if _, ok := res.sent[topic]; !ok && strings.HasPrefix(topic, prefix+"/") {
			t.Errorf("%s: retained after restart but never published", topic)
		}
	}
	return lost, newer
}

// TestPersistCrash kills Moat with SIGKILL in the middle of a storm of
// QoS 1 retained publishes: every acknowledged value must be on disk, and
// gocryptfs must leave with Moat (parent-death signal) without a mount
// left behind.
func TestPersistCrash(t *testing.T) {
	e := newPersistEnv(t)
	m := e.start()
	gc := gocryptfsChild(t, m)

	const publishers, topics, window = 8, 200, 16
	const killAfter = 4000 // acknowledgements; the storm is cut short anyway after 3 s
	stop := make(chan struct{})
	killed := make(chan struct{})
	var once sync.Once
	kill := func() {
		once.Do(func() {
			m.Kill()
			close(killed)
		})
	}
	timer := time.AfterFunc(3*time.Second, kill)
	defer timer.Stop()
	res := storm(t, e.addr, "storm", publishers, topics, window, stop, func(total int) {
		if total >= killAfter {
			go kill()
		}
	})
	<-killed
	close(stop)
	if res.acks == 0 {
		t.Fatal("no publish was acknowledged before the kill")
	}

	deadline := time.Now().Add(15 * time.Second)
	for !processGone(gc) {
		if time.Now().After(deadline) {
			t.Fatalf("gocryptfs (pid %d) still running 15 s after moat was killed", gc)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitUnmounted(t, e.plain, 15*time.Second)
	assertEmptyDir(t, e.plain)

	m2 := e.start()
	n, _ := restored(t, m2)
	if n < len(res.acked) {
		t.Fatalf("restored %d retained messages, but %d topics had an acknowledged value", n, len(res.acked))
	}
	// One filter per publisher (200 topics each), fetched in turn.
	var filters []string
	var after []int
	sum := 0
	for p := range publishers {
		filters = append(filters, fmt.Sprintf("storm/%d/#", p))
		for topic := range res.acked {
			if strings.HasPrefix(topic, fmt.Sprintf("storm/%d/", p)) {
				sum++
			}
		}
		after = append(after, sum)
	}
	got := collectStaged(t, e.addr, filters, after, n)
	lost, newer := checkStorm(t, res, got, "storm")
	t.Logf("crash: %d acknowledged publishes over %d topics before kill -9; restored %d retained; lost %d; %d topics hold a newer, unacknowledged value",
		res.acks, len(res.acked), n, lost, newer)
	if code := m2.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM", code)
	}
	assertEmptyDir(t, e.plain)
}

// TestPersistNoPlaintext: topic names and payloads (retained, session
// subscriptions, queued messages) never reach the disk in plain text.
func TestPersistNoPlaintext(t *testing.T) {
	e := newPersistEnv(t)
	m := e.start()
	topicMark := "TOPICMARK" + randHex(6)
	payloadMark := "PAYLOADMARK" + randHex(6)

	// A persistent session subscribed to a marked filter, offline, with a
	// queued marked message.
	sub := dial(t, e.addr, mqtttest.Options{ClientID: "sess-" + topicMark, SessionExpiry: 3600})
	sub.SendSubscribe(1, 1, "q/"+topicMark+"/#")
	expect(t, sub, packets.Suback)
	sub.Disconnect()

	pub := dial(t, e.addr, mqtttest.Options{ClientID: "pub"})
	for i := range 20 {
		topic := fmt.Sprintf("r/%s/%d", topicMark, i)
		if rc := publishQoS1(t, pub, topic, []byte(payloadMark+" value "+strconv.Itoa(i)), true, uint16(i+1)); rc != 0 {
			t.Fatalf("retained publish refused: 0x%02x", rc)
		}
	}
	if rc := publishQoS1(t, pub, "q/"+topicMark+"/1", []byte(payloadMark+" queued"), false, 100); rc >= 0x80 {
		t.Fatalf("publish refused: 0x%02x", rc)
	}
	pub.Disconnect()
	if code := m.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM", code)
	}

	if _, err := os.Stat(filepath.Join(e.cipher, "gocryptfs.conf")); err != nil {
		t.Fatalf("cipher directory has no gocryptfs.conf: %v", err)
	}
	err := filepath.WalkDir(e.cipher, func(p string, d fs.DirEntry, err error) error {
		if err == nil && (d.Name() == "moat.db" || d.Name() == ".moat-volume") {
			t.Errorf("%s: store file visible by its plain name in the cipher directory", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	assertEmptyDir(t, e.plain)
	files := assertNoPlaintext(t, []string{topicMark, payloadMark}, e.cipher, e.plain)
	t.Logf("no plaintext: %d files under the cipher directory and the unmounted mount point hold neither marker", files)

	// The markers are really stored: they come back through the mount.
	m2 := e.start()
	got := collectRetained(t, e.addr, "r/#", 20)
	if !bytes.HasPrefix(got["r/"+topicMark+"/7"], []byte(payloadMark)) {
		t.Fatalf("retained message not restored: %q", got["r/"+topicMark+"/7"])
	}
	m2.Stop()
}

// TestPersistMountDeath kills gocryptfs under a running Moat while a
// client publishes QoS 1 retained messages. The store's files stay open on
// the dead mount, so every later write fails (ENOTCONN) instead of landing
// in the plain directory beneath: publishes are refused (MQTT 5: PUBACK
// 0x80) and /readyz turns 503. Moat remounts the volume, opens the store
// again and writes its state into it: it becomes ready without a restart,
// accepts retained publishes again, and after a restart everything
// acknowledged, before and after the death, is there.
func TestPersistMountDeath(t *testing.T) {
	e := newPersistEnv(t)
	m := e.start()
	if code, body := HTTPGet(t, e.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz before the kill: %d %s", code, body)
	}
	gc := gocryptfsChild(t, m)

	pub := dial(t, e.addr, mqtttest.Options{ClientID: "md-pub"})
	acked := map[string]int{}
	killedAt, refusedAt := 0, 0
	for seq := 1; seq <= 5000 && refusedAt == 0; seq++ {
		if seq == 300 {
			if err := syscall.Kill(gc, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killedAt = seq
		}
		topic := fmt.Sprintf("md/%02d", seq%50)
		if err := pub.SendPublish(topic, []byte(strconv.Itoa(seq)), 1, true, uint16(seq)); err != nil {
			t.Fatalf("publish %d: %v", seq, err)
		}
		pk, err := pub.Next(15 * time.Second)
		if err != nil {
			t.Fatalf("publish %d: no PUBACK (%v); an MQTT 5 client must hear a refusal", seq, err)
		}
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != uint16(seq) {
			t.Fatalf("publish %d: got packet type %d id %d", seq, pk.FixedHeader.Type, pk.PacketID)
		}
		switch {
		case pk.ReasonCode == 0:
			acked[topic] = seq
		case pk.ReasonCode == packets.ErrUnspecifiedError.Code:
			refusedAt = seq
		default:
			t.Fatalf("publish %d: PUBACK reason 0x%02x", seq, pk.ReasonCode)
		}
	}
	if refusedAt == 0 {
		t.Fatal("publishes were still acknowledged long after gocryptfs died")
	}
	t.Logf("mount death: gocryptfs killed before publish %d; first refused publish %d; %d acknowledged after the kill",
		killedAt, refusedAt, refusedAt-killedAt)

	// The refused publish's connection is closed after its PUBACK 0x80.
	if pk, err := pub.Next(15 * time.Second); err == nil {
		t.Fatalf("connection still open after a refused retained publish: got packet type %d", pk.FixedHeader.Type)
	}
	pub.Close()

	// Back without a restart: remounted, the store re-opened, ready again.
	m.WaitOutput(regexp.MustCompile(`persistence resumed`), 60*time.Second)
	if code, body := HTTPGet(t, e.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz after the remount: %d %s, want 200", code, body)
	}
	pub = dial(t, e.addr, mqtttest.Options{ClientID: "md-pub2"})
	if rc := publishQoS1(t, pub, "md/after", []byte("9000"), true, 9000); rc != 0 {
		t.Fatalf("retained publish after the remount: PUBACK 0x%02x, want 0", rc)
	}
	acked["md/after"] = 9000
	pub.Disconnect()

	if code := m.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM, want 0 (persistence had resumed)", code)
	}
	assertEmptyDir(t, e.plain)

	m2 := e.start()
	n, _ := restored(t, m2)
	got := collectRetained(t, e.addr, "md/#", n)
	for topic, want := range acked {
		v, _ := strconv.Atoi(string(got[topic]))
		if v < want {
			t.Errorf("%s: %q after restart, but %d was acknowledged", topic, got[topic], want)
		}
	}
	if code, body := HTTPGet(t, e.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz after restart: %d %s", code, body)
	}
	m2.Stop()
}

// TestPersistMountDeathIdle kills gocryptfs while nothing is written:
// Moat is unready and refuses retained writes until the store is open on
// the remounted volume, then takes them again, and a persistent session
// made before the death survives a later restart with its queued message.
func TestPersistMountDeathIdle(t *testing.T) {
	e := newPersistEnv(t)
	m := e.start()
	sub := dial(t, e.addr, mqtttest.Options{ClientID: "idle-sub", Persistent: true, SessionExpiry: 3600})
	sub.MustSubscribe(t, 1, "idle/q")
	sub.Disconnect()
	gc := gocryptfsChild(t, m)
	if err := syscall.Kill(gc, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m.WaitOutput(regexp.MustCompile(`persistence resumed`), 60*time.Second)
	if code, body := HTTPGet(t, e.admin+"/readyz"); code != 200 {
		t.Fatalf("/readyz after the store re-opened: %d %s, want 200", code, body)
	}
	pub := dial(t, e.addr, mqtttest.Options{ClientID: "idle-pub"})
	if rc := publishQoS1(t, pub, "idle/x", []byte("x"), true, 1); rc != 0 {
		t.Fatalf("retained publish after the store re-opened: PUBACK 0x%02x, want 0", rc)
	}
	if rc := publishQoS1(t, pub, "idle/q", []byte("queued"), false, 2); rc != 0 {
		t.Fatalf("publish to the offline session: PUBACK 0x%02x", rc)
	}
	pub.Disconnect()
	if code := m.Stop(); code != 0 {
		t.Fatalf("moat exited %d", code)
	}
	assertEmptyDir(t, e.plain)
	m2 := e.start()
	defer m2.Stop()
	if got := collectRetained(t, e.addr, "idle/x", 1); string(got["idle/x"]) != "x" {
		t.Fatalf("retained after restart: %q", got)
	}
	sub = dial(t, e.addr, mqtttest.Options{ClientID: "idle-sub", Persistent: true, SessionExpiry: 3600, AutoAck: true})
	if !sub.WaitTopic("idle/q") {
		t.Fatal("message queued for the session after the remount was lost")
	}
}

// TestPersistErrors: each broken setup stops Moat with a clear message and
// a non-zero exit, and nothing is written in plain text.
func TestPersistErrors(t *testing.T) {
	t.Run("wrong key", func(t *testing.T) {
		e := newPersistEnv(t)
		m := e.start()
		m.Stop()
		secret := "wrong-key-" + randHex(8)
		WriteFile(t, e.key, secret+"\n", 0o600)
		code, out := e.run()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "wrong key in persistence_key_file") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
		if strings.Contains(out, secret) {
			t.Fatal("the key appears in the output")
		}
		assertEmptyDir(t, e.plain)
	})
	t.Run("damaged gocryptfs.conf", func(t *testing.T) {
		e := newPersistEnv(t)
		m := e.start()
		m.Stop()
		conf := filepath.Join(e.cipher, "gocryptfs.conf")
		if err := os.Truncate(conf, 40); err != nil {
			t.Fatal(err)
		}
		code, out := e.run()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "gocryptfs.conf is missing or damaged") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
		assertEmptyDir(t, e.plain)
	})
	t.Run("mount point not empty", func(t *testing.T) {
		e := newPersistEnv(t)
		WriteFile(t, filepath.Join(e.plain, "stray"), "x", 0o600)
		code, out := e.run()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "is not empty") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
		ents, _ := os.ReadDir(e.plain)
		if len(ents) != 1 || MountsUnder(t, e.plain)[e.plain] != "" {
			t.Fatalf("mount point changed: %v", ents)
		}
	})
	t.Run("mount point is a file", func(t *testing.T) {
		e := newPersistEnv(t)
		WriteFile(t, e.plain, "x", 0o600)
		code, out := e.run()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "is not a directory") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
	})
	t.Run("mount point is a read-only mount", func(t *testing.T) {
		e := newPersistEnv(t)
		// A read-only bind mount of an empty directory: Moat must refuse a
		// mount point that already holds a foreign filesystem, not mount
		// over it or write into it.
		if err := os.MkdirAll(e.plain, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "--bind", "-o", "ro", e.plain, e.plain).CombinedOutput(); err != nil {
			testenv.Missing(t, "bind mounts", fmt.Sprintf("run as root (%v: %s)", err, out))
		}
		t.Cleanup(func() { syscall.Unmount(e.plain, syscall.MNT_DETACH) })
		code, out := e.run()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "unusable mount point") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
	})
	t.Run("disk full", testDiskFull)
	t.Run("FUSE missing", func(t *testing.T) {
		// /dev/null bind-mounted over /dev/fuse in a private mount
		// namespace: the device opens, but mounting fails.
		unshare := testenv.LookPath(t, "unshare", "apt-get install util-linux")
		e := newPersistEnv(t)
		script := `mount --bind /dev/null /dev/fuse && exec "$0" serve -c "$1"`
		m := StartProcess(t, "moat (no FUSE)", unshare,
			[]string{"--mount", "--propagation", "private", "sh", "-c", script, MoatBinary(t), e.conf}, "MOAT_TEST_SCRYPTN=10")
		code, ok := m.WaitExit(startTimeout)
		if !ok {
			t.Fatal("moat still running without FUSE")
		}
		out := m.Output()
		t.Logf("exit %d: %s", code, startError(out))
		if code == 0 || !strings.Contains(out, "FUSE is not available") {
			t.Fatalf("exit %d, output:\n%s", code, out)
		}
		assertEmptyDir(t, e.plain)
	})
}

// testDiskFull puts the cipher directory on a 4 MiB tmpfs and fills it
// with retained messages: the publish that does not fit is refused (MQTT 5
// PUBACK 0x80), never acknowledged; Moat keeps serving non-retained
// traffic; after the disk is grown and Moat restarted, every acknowledged
// message is there.
func testDiskFull(t *testing.T) {
	e := newPersistEnv(t)
	if err := os.MkdirAll(e.cipher, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", e.cipher).CombinedOutput(); err != nil {
		testenv.Missing(t, "tmpfs mounts", fmt.Sprintf("run as root (%v: %s)", err, out))
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(e.cipher, 0); err != nil {
			syscall.Unmount(e.cipher, syscall.MNT_DETACH)
		}
	})
	m := e.start()

	sub := dial(t, e.addr, mqtttest.Options{ClientID: "full-sub"})
	sub.SendSubscribe(1, 1, "live/#")
	expect(t, sub, packets.Suback)

	pub := dial(t, e.addr, mqtttest.Options{ClientID: "full-pub"})
	payload := make([]byte, 64<<10)
	acked := map[string][]byte{}
	refused := 0
	for i := 1; i <= 200 && refused == 0; i++ {
		p := bytes.Clone(payload)
		rand.Read(p)
		topic := fmt.Sprintf("full/%03d", i)
		if err := pub.SendPublish(topic, p, 1, true, uint16(i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		pk, err := pub.Next(30 * time.Second)
		if err != nil {
			t.Fatalf("publish %d: no PUBACK (%v)", i, err)
		}
		if pk.FixedHeader.Type != packets.Puback {
			t.Fatalf("publish %d: packet type %d", i, pk.FixedHeader.Type)
		}
		switch pk.ReasonCode {
		case 0:
			acked[topic] = p
		case packets.ErrUnspecifiedError.Code:
			refused = i
		default:
			t.Fatalf("publish %d: PUBACK 0x%02x", i, pk.ReasonCode)
		}
	}
	if refused == 0 {
		t.Fatal("200 × 64 KiB retained messages fit on a 4 MiB disk")
	}
	t.Logf("disk full: %d retained messages of 64 KiB acknowledged, publish %d refused with PUBACK 0x80", len(acked), refused)

	// The refused publish's connection is closed after its PUBACK 0x80;
	// later retained publishes are refused too; live traffic still flows.
	if pk, err := pub.Next(15 * time.Second); err == nil {
		t.Fatalf("connection still open after a refused retained publish: got packet type %d", pk.FixedHeader.Type)
	}
	pub.Close()
	pub = dial(t, e.addr, mqtttest.Options{ClientID: "full-pub2"})
	if rc := publishQoS1(t, pub, "full/small", []byte("x"), true, 500); rc != packets.ErrUnspecifiedError.Code {
		t.Fatalf("retained publish on a failed store: PUBACK 0x%02x, want 0x80", rc)
	}
	if rc := publishQoS1(t, pub, "live/1", []byte("still here"), false, 501); rc != 0 {
		t.Fatalf("live publish: PUBACK 0x%02x", rc)
	}
	got := expect(t, sub, packets.Publish)
	if got.TopicName != "live/1" || string(got.Payload) != "still here" {
		t.Fatalf("subscriber got %s %q", got.TopicName, got.Payload)
	}
	if code, _ := HTTPGet(t, e.admin+"/readyz"); code != 503 {
		t.Fatalf("/readyz with a failed store: %d, want 503", code)
	}
	pub.Disconnect()
	sub.Disconnect()
	code := m.Stop()
	t.Logf("disk full: moat exited %d after SIGTERM", code)
	assertEmptyDir(t, e.plain)

	if out, err := exec.Command("mount", "-o", "remount,size=64m", e.cipher).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs: %v: %s", err, out)
	}
	m2 := e.start()
	n, _ := restored(t, m2)
	if n < len(acked) {
		t.Fatalf("restored %d retained messages, %d were acknowledged", n, len(acked))
	}
	back := collectRetained(t, e.addr, "full/#", n)
	for topic, p := range acked {
		if !bytes.Equal(back[topic], p) {
			t.Errorf("%s: acknowledged payload not restored intact (%d bytes back)", topic, len(back[topic]))
		}
	}
	if code := m2.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM", code)
	}
}

// TestPersistRestart: retained messages and persistent sessions (MQTT 5
// session expiry and 3.1.1 clean=false) with their subscriptions and queued
// QoS 1 messages survive a clean restart; retained messages carry no
// invented expiry (mochi's 24 h default is off) and keep their own.
func TestPersistRestart(t *testing.T) {
	e := newPersistEnv(t)
	m := e.start()

	sessions := []mqtttest.Options{
		{ClientID: "sess5", Version: 5, SessionExpiry: 3600},
		{ClientID: "sess3", Version: 4, Persistent: true},
	}
	for _, o := range sessions {
		c := dial(t, e.addr, o)
		c.SendSubscribe(1, 1, "q/"+o.ClientID+"/#")
		expect(t, c, packets.Suback)
		c.Disconnect()
	}

	pub := dial(t, e.addr, mqtttest.Options{ClientID: "pub"})
	id := uint16(0)
	next := func() uint16 { id++; return id }
	for _, o := range sessions {
		for i := 1; i <= 5; i++ {
			if rc := publishQoS1(t, pub, fmt.Sprintf("q/%s/%d", o.ClientID, i), []byte("queued "+strconv.Itoa(i)), false, next()); rc != 0 {
				t.Fatalf("publish: 0x%02x", rc)
			}
		}
	}
	if rc := publishQoS1(t, pub, "r/plain", []byte("no expiry"), true, next()); rc != 0 {
		t.Fatalf("publish: 0x%02x", rc)
	}
	if rc := publishQoS1(t, pub, "r/gone", []byte("deleted next"), true, next()); rc != 0 {
		t.Fatalf("publish: 0x%02x", rc)
	}
	if rc := publishQoS1(t, pub, "r/gone", nil, true, next()); rc != 0 {
		t.Fatalf("publish: 0x%02x", rc)
	}
	exp := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "r/expiring", Payload: []byte("one hour"), PacketID: next(),
		Properties: packets.Properties{MessageExpiryInterval: 3600},
	}
	if err := pub.Write(exp); err != nil {
		t.Fatal(err)
	}
	if ack := expect(t, pub, packets.Puback); ack.ReasonCode != 0 {
		t.Fatalf("publish: 0x%02x", ack.ReasonCode)
	}
	pub.Disconnect()
	if code := m.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM", code)
	}

	m2 := e.start()
	retained, stored := restored(t, m2)
	t.Logf("restart: restored %d retained messages and %d sessions", retained, stored)
	if retained != 2 || stored != 2 {
		t.Fatalf("restored %d retained messages and %d sessions, want 2 and 2", retained, stored)
	}

	// Retained: exact set, no invented expiry, own expiry kept.
	c := dial(t, e.addr, mqtttest.Options{ClientID: "ret"})
	c.SendSubscribe(1, 1, "r/#")
	got := map[string]packets.Packet{}
	for len(got) < 2 {
		pk, err := c.Next(15 * time.Second)
		if err != nil {
			t.Fatalf("retained after restart: %v (got %d)", err, len(got))
		}
		if pk.FixedHeader.Type == packets.Publish {
			got[pk.TopicName] = pk
			if pk.FixedHeader.Qos == 1 {
				c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}
		}
	}
	if p := got["r/plain"]; string(p.Payload) != "no expiry" || p.Properties.MessageExpiryInterval != 0 {
		t.Fatalf("r/plain after restart: %q, expiry interval %d (want none)", p.Payload, p.Properties.MessageExpiryInterval)
	}
	if p := got["r/expiring"]; string(p.Payload) != "one hour" || p.Properties.MessageExpiryInterval == 0 || p.Properties.MessageExpiryInterval > 3600 {
		t.Fatalf("r/expiring after restart: %q, expiry interval %d (want 1..3600)", p.Payload, p.Properties.MessageExpiryInterval)
	}
	c.Disconnect()

	for _, o := range sessions {
		o.Persistent = true
		c, ack, err := mqtttest.Dial(e.addr, mqttOptions(o))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if ack.ReasonCode != 0 || !ack.SessionPresent {
			t.Fatalf("%s: CONNACK reason 0x%02x, session present %v", o.ClientID, ack.ReasonCode, ack.SessionPresent)
		}
		seen := map[string]bool{}
		for len(seen) < 5 {
			pk, err := c.Next(15 * time.Second)
			if err != nil {
				t.Fatalf("%s: queued messages after restart: %v (got %d of 5)", o.ClientID, err, len(seen))
			}
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			if pk.FixedHeader.Qos != 1 {
				t.Fatalf("%s: queued message at QoS %d", o.ClientID, pk.FixedHeader.Qos)
			}
			seen[pk.TopicName] = true
			c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
		// The subscription itself survived: a new message arrives.
		p := dial(t, e.addr, mqtttest.Options{ClientID: "pub2"})
		if rc := publishQoS1(t, p, "q/"+o.ClientID+"/live", []byte("live"), false, 1); rc != 0 {
			t.Fatalf("publish: 0x%02x", rc)
		}
		p.Disconnect()
		for {
			pk, err := c.Next(15 * time.Second)
			if err != nil {
				t.Fatalf("%s: live message after restart: %v", o.ClientID, err)
			}
			if pk.FixedHeader.Type == packets.Publish && pk.TopicName == "q/"+o.ClientID+"/live" {
				c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				break
			}
		}
		c.Disconnect()
	}
	if code := m2.Stop(); code != 0 {
		t.Fatalf("moat exited %d after SIGTERM", code)
	}
}
