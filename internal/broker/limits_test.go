package broker_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// limitsConf: a persistent store (unencrypted, so that what is stored can
// be checked) and the admin listener for /readyz and /metrics.
const limitsConf = `persistence true
persistence_location store
persistence_encryption off
admin_listener 127.0.0.1:0
`

// restart closes tb's broker and starts a new one on the same files.
func restart(t *testing.T, tb *testBroker) *testBroker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := tb.b.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	cfg, err := config.Load(tb.conf, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	lg, err := logging.New(logging.Options{Types: map[string]bool{"all": true}, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg, Logger: lg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	next := *tb
	next.b, next.addr, next.logs = b, b.Addr(listenerID).String(), logs
	return &next
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: waitLong}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// exchange sends raw bytes on a fresh connection and returns everything
// the broker sends until it closes the connection (or d passes).
func exchange(t *testing.T, addr string, raw []byte, d time.Duration) (got []byte, closed bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(d))
	if _, err := conn.Write(raw); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, conn)
	ne, timeout := err.(net.Error)
	return buf.Bytes(), !(timeout && ne.Timeout())
}

// encodeConnect is the wire CONNECT of o with changes applied.
func encodeConnect(t *testing.T, o opts, change func(*packets.Packet)) []byte {
	t.Helper()
	pk := mqtttest.ConnectPacket(o.options())
	if change != nil {
		change(&pk)
	}
	b, err := mqtttest.Encode(pk, o.v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publishRefused sends a QoS 1 publish and returns its PUBACK code, or
// noAck when the broker closed the connection without acknowledging.
func publishRefused(t *testing.T, c *client, topic string, retain bool) byte {
	t.Helper()
	id := c.NextID()
	if err := c.SendPublish(topic, []byte("v"), 1, retain, id); err != nil {
		return noAck
	}
	for {
		pk, err := c.Next(waitLong)
		if err != nil {
			return noAck
		}
		if pk.FixedHeader.Type == packets.Puback && pk.PacketID == id {
			return pk.ReasonCode
		}
	}
}

// TestStorePoisoningRefused: a retained topic, a persistent client id or
// a persistent subscription over the store's 32 KiB key limit is refused
// to its sender before anything is acknowledged (MQTT 5 with a reason
// code, 3.1.1 with its closest code or a closed connection), 200 times at
// once; the store stays healthy, /readyz stays 200, every other client's
// retained publishes are saved and survive a restart.
func TestStorePoisoningRefused(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: limitsConf})
	huge := "alice/" + strings.Repeat("x", 40<<10)
	hugeID := strings.Repeat("c", 40<<10) // no '/': the ACL's %u patterns would refuse it anyway
	good := connect(t, tb.addr, as(4, "alice", "good"))
	watcher := connect(t, tb.addr, as(5, "bob", "watcher"))
	watcher.mustSubscribe("bob/#")
	if a := good.publish("alice/keep/0", "stored", 1, true); a.code != 0 {
		t.Fatalf("retained publish: 0x%02x", a.code)
	}
	probe := func(after string, i int) {
		t.Helper()
		topic := fmt.Sprintf("alice/keep/%d", i)
		if a := good.publish(topic, "stored", 1, true); a.code != 0 {
			t.Fatalf("after %s: retained publish 0x%02x", after, a.code)
		}
		bobTopic := fmt.Sprintf("bob/probe/%d", i)
		if a := watcher.publish(bobTopic, "ok", 1, false); a.code != 0 || !watcher.waitTopic(bobTopic) {
			t.Fatalf("after %s: bob not served", after)
		}
	}

	type attack struct {
		name string
		run  func(i int) error
	}
	attacks := []attack{
		{"3.1.1 retained publish on a 40 KiB topic", func(i int) error {
			c := connect(t, tb.addr, as(4, "alice", fmt.Sprintf("r4-%d", i)))
			if code := publishRefused(t, c, huge, true); code != noAck {
				return fmt.Errorf("acknowledged with 0x%02x", code)
			}
			if !c.waitClosed() {
				return fmt.Errorf("connection left open")
			}
			return nil
		}},
		{"MQTT 5 retained publish on a 40 KiB topic", func(i int) error {
			c := connect(t, tb.addr, as(5, "alice", fmt.Sprintf("r5-%d", i)))
			if code := publishRefused(t, c, huge, true); code != 0x90 {
				return fmt.Errorf("PUBACK 0x%02x, want 0x90", code)
			}
			return nil
		}},
		{"3.1.1 clean=false CONNECT with a 40 KiB client id", func(i int) error {
			o := as(4, "alice", fmt.Sprintf("%d-%s", i, hugeID))
			o.persist = true
			if _, ack := dial(t, tb.addr, o); ack.ReasonCode != 2 {
				return fmt.Errorf("CONNACK %d, want 2", ack.ReasonCode)
			}
			return nil
		}},
		{"MQTT 5 persistent CONNECT with a 40 KiB client id", func(i int) error {
			o := as(5, "alice", fmt.Sprintf("%d-%s", i, hugeID))
			o.persist = true
			if _, ack := dial(t, tb.addr, o); ack.ReasonCode != 0x85 {
				return fmt.Errorf("CONNACK 0x%02x, want 0x85", ack.ReasonCode)
			}
			return nil
		}},
		{"persistent 3.1.1 SUBSCRIBE to a 40 KiB filter", func(i int) error {
			o := as(4, "alice", fmt.Sprintf("s4-%d", i))
			o.persist = true
			c := connect(t, tb.addr, o)
			if codes := c.subscribe(huge, "alice/ok"); codes[0] != 0x80 || codes[1] != 1 {
				return fmt.Errorf("SUBACK % x, want 80 01", codes)
			}
			return nil
		}},
		{"persistent MQTT 5 SUBSCRIBE to a 40 KiB filter", func(i int) error {
			o := as(5, "alice", fmt.Sprintf("s5-%d", i))
			o.persist = true
			c := connect(t, tb.addr, o)
			if codes := c.subscribe(huge+"/#", "alice/ok"); codes[0] != 0x8F || codes[1] != 1 {
				return fmt.Errorf("SUBACK % x, want 8f 01", codes)
			}
			return nil
		}},
	}
	for n, a := range attacks {
		if err := a.run(0); err != nil {
			t.Errorf("%s: %v", a.name, err)
		}
		probe(a.name, n+1)
	}
	// 200 at once, all kinds mixed.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a := attacks[i%len(attacks)]
			if err := a.run(1000 + i); err != nil {
				errs <- fmt.Errorf("%s #%d: %w", a.name, i, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	probe("200 at once", 100)

	if code, body := httpGet(t, "http://"+tb.b.AdminAddr()+"/readyz"); code != 200 {
		t.Fatalf("/readyz %d: %s", code, body)
	}
	if _, body := httpGet(t, "http://"+tb.b.AdminAddr()+"/metrics"); !strings.Contains(body, `moat_limit_refusals_total{limit="max_topic_length"}`) ||
		!strings.Contains(body, `moat_limit_refusals_total{limit="max_client_id_length"}`) {
		var lines []string
		for _, l := range strings.Split(body, "\n") {
			if strings.Contains(l, "limit") {
				lines = append(lines, l)
			}
		}
		t.Errorf("/metrics does not count the refusals: %q", lines)
	}
	if lines := tb.logs.Lines("resource limit reached"); len(lines) == 0 || len(lines) > 20 {
		t.Errorf("%d refusal log lines for 206 refusals, want a few (rate-limited)", len(lines))
	} else if logs := tb.logs.String(); strings.Contains(logs, strings.Repeat("x", 1024)) || strings.Contains(logs, strings.Repeat("c", 1024)) {
		t.Error("a 40 KiB client string reached the log untruncated")
	}

	tb = restart(t, tb)
	for _, i := range []int{0, 1, 2, 3, 4, 5, 6, 100} {
		topic := fmt.Sprintf("alice/keep/%d", i)
		if _, ok := tb.b.Server().Topics.Retained.Get(topic); !ok {
			t.Errorf("retained %s lost", topic)
		}
	}
	for id, cl := range tb.b.Server().Clients.GetAll() {
		if len(id) > 1024 {
			t.Errorf("a session with a %d-byte client id was stored", len(id))
		}
		for f := range cl.State.Subscriptions.GetAll() {
			if len(f) > 4096 {
				t.Errorf("%s: a %d-byte filter was stored", id, len(f))
			}
		}
	}
}

// cpuSeconds is the process's user+system CPU time.
func cpuSeconds(t *testing.T) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestDeepFilterRefusedCheaply: a 60 KiB filter of 30,000 levels is
// refused (0x8F, 3.1.1 0x80) by the level limit before any ACL or topic
// tree work, while other clients' subscriptions are served.
func TestDeepFilterRefusedCheaply(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	deep := "alice" + strings.Repeat("/a", 30000)
	other := connect(t, tb.addr, as(5, "bob", "other"))
	for _, v := range []byte{5, 4} {
		c := connect(t, tb.addr, as(v, "alice", fmt.Sprintf("deep-%d", v)))
		done := make(chan []byte, 1)
		cpu := cpuSeconds(t)
		start := time.Now()
		go func() {
			id := c.NextID()
			if err := c.SendSubscribe(id, 1, deep, deep+"/#"); err != nil {
				done <- nil
				return
			}
			ack, _ := c.WaitPacket(packets.Suback, id, time.Minute)
			done <- ack.ReasonCodes
		}()
		// Served meanwhile.
		oid := other.NextID()
		if err := other.SendSubscribe(oid, 1, fmt.Sprintf("bob/during/%d", v)); err != nil {
			t.Fatal(err)
		}
		if ack, ok := other.WaitPacket(packets.Suback, oid, time.Minute); !ok || ack.ReasonCodes[0] != 1 {
			t.Errorf("another client's SUBSCRIBE was not served meanwhile: %v", other.Err())
		}
		otherServed := time.Since(start)
		codes := <-done
		t.Logf("MQTT %s: SUBSCRIBE of a %d-byte, %d-level filter: %.3f CPU seconds, answered after %v; another client's SUBSCRIBE answered after %v",
			versionName(v), len(deep), 30001, cpuSeconds(t)-cpu, time.Since(start).Round(time.Millisecond), otherServed.Round(time.Millisecond))
		want := byte(0x8F)
		if v == 4 {
			want = 0x80
		}
		if len(codes) != 2 || codes[0] != want || codes[1] != want {
			t.Errorf("MQTT %s: SUBACK % x, want %02x %02x", versionName(v), codes, want, want)
		}
		if codes == nil {
			t.Fatalf("MQTT %s: no SUBACK within a minute", versionName(v))
		}
		c.mustSubscribe("alice/fine")
	}
	if n := atomic.LoadInt64(&tb.b.Server().Info.Subscriptions); n > 4 {
		t.Errorf("%d subscriptions held, want the 4 valid ones", n)
	}
}

// TestConnectSizeBounded: twenty MQTT 5 CONNECTs of about 1 MiB (user
// properties, a Will) for persistent sessions are refused with 0x95, and
// the offline sessions of smaller ones keep no CONNECT user properties.
func TestConnectSizeBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_packet_size 2000000\n"})
	props := func(n int) []packets.UserProperty {
		u := make([]packets.UserProperty, n)
		for i := range u {
			u[i] = packets.UserProperty{Key: fmt.Sprintf("k%05d", i), Val: "v"}
		}
		return u
	}
	bigConnect := func(id string, users int) []byte {
		o := as(5, "alice", id)
		o.persist = true
		o.will = &packets.Packet{TopicName: "alice/will", Payload: bytes.Repeat([]byte("w"), 60<<10)}
		return encodeConnect(t, o, func(pk *packets.Packet) {
			pk.Properties.User = props(users)
			pk.Connect.WillProperties.User = props(users / 4)
		})
	}
	before := heapInUse()
	var size int
	for i := 0; i < 20; i++ {
		raw := bigConnect(fmt.Sprintf("big-%d", i), 60000)
		size = len(raw)
		got, _ := exchange(t, tb.addr, raw, waitLong)
		if len(got) < 4 || got[0] != 0x20 || got[3] != 0x95 {
			t.Errorf("CONNECT %d of %d bytes: answer % x, want CONNACK 0x95", i, len(raw), got[:min(len(got), 8)])
		}
	}
	grown := heapInUse() - before
	t.Logf("20 MQTT 5 CONNECTs of %d bytes for persistent sessions: heap +%.1f MiB, %d sessions held",
		size, float64(grown)/(1<<20), len(tb.b.Server().Clients.GetAll()))

	// A CONNECT within the limit keeps no CONNECT user properties.
	o := as(5, "alice", "small")
	o.persist = true
	raw := encodeConnect(t, o, func(pk *packets.Packet) { pk.Properties.User = props(1000) })
	got, _ := exchange(t, tb.addr, append(raw, 0xE0, 0), waitLong)
	if len(got) < 4 || got[3] != 0 {
		t.Fatalf("CONNECT within the limit refused: % x", got[:min(len(got), 8)])
	}
	if cl, ok := tb.b.Server().Clients.Get("small"); !ok {
		t.Fatal("session small not held")
	} else if n := len(cl.Properties.Props.User); n != 0 {
		t.Errorf("the offline session keeps %d CONNECT user properties", n)
	}
	connect(t, tb.addr, as(4, "bob", "well-behaved")).ping()
}

// TestSessionsPerUserBounded: 2000 never-expiring sessions of one user
// stop at max_sessions_per_user (MQTT 5 0x97, 3.1.1 3); another user is
// served; a never-expiring session is capped at persistent_client_expiration.
func TestSessionsPerUserBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	before := heapInUse()
	var mu sync.Mutex
	codes := map[byte]int{}
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				v := byte(4)
				if i%2 == 1 {
					v = 5
				}
				o := as(v, "alice", fmt.Sprintf("sess-%04d", i))
				o.persist = true
				c, ack, err := mqtttest.Dial(tb.addr, o.options())
				if err != nil {
					t.Errorf("dial %d: %v", i, err)
					continue
				}
				c.Close()
				mu.Lock()
				codes[ack.ReasonCode]++
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	held := 0
	for _, cl := range tb.b.Server().Clients.GetAll() {
		if string(cl.Properties.Username) == "alice" {
			held++
		}
	}
	t.Logf("2000 persistent CONNECTs of one user: answers %v, %d sessions held, heap +%.1f MiB",
		codes, held, float64(heapInUse()-before)/(1<<20))
	if held != 256 || codes[0] != 256 || codes[3]+codes[0x97] != 2000-256 {
		t.Errorf("answers %v, %d sessions held; want 256 accepted, the rest 3 / 0x97", codes, held)
	}
	// A returning session still gets in; another user is served.
	o := as(4, "alice", "sess-0000")
	o.persist = true
	connect(t, tb.addr, o).ping()
	connect(t, tb.addr, as(5, "bob", "bob-1")).ping()

	o = as(5, "bob", "bob-forever")
	o.persist = true
	raw := encodeConnect(t, o, func(pk *packets.Packet) { pk.Properties.SessionExpiryInterval = 0xFFFFFFFF })
	got, _ := exchange(t, tb.addr, raw, time.Second)
	// CONNACK: flags, code 0, then properties holding Session Expiry
	// Interval (0x11) = 30 days (2592000 = 0x00278D00).
	if !bytes.Contains(got, []byte{0x11, 0x00, 0x27, 0x8D, 0x00}) {
		t.Errorf("CONNACK % x does not cap the session expiry at 30 days", got)
	}
}

// TestSubscriptionsPerClientBounded: filters beyond
// max_subscriptions_per_client get 0x97 (3.1.1 0x80); resubscribing to a
// held filter is not a new subscription.
func TestSubscriptionsPerClientBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_subscriptions_per_client 10\n"})
	for _, v := range []byte{5, 4} {
		c := connect(t, tb.addr, as(v, "alice", fmt.Sprintf("subs-%d", v)))
		var filters []string
		for i := 0; i < 12; i++ {
			filters = append(filters, fmt.Sprintf("alice/%d", i))
		}
		codes := c.subscribe(filters...)
		over := byte(0x97)
		if v == 4 {
			over = 0x80
		}
		want := append(bytes.Repeat([]byte{1}, 10), over, over)
		if !bytes.Equal(codes, want) {
			t.Errorf("MQTT %s: SUBACK % x, want % x", versionName(v), codes, want)
		}
		if codes := c.subscribe("alice/0", "alice/11"); codes[0] != 1 || codes[1] != over {
			t.Errorf("MQTT %s: resubscribe SUBACK % x", versionName(v), codes)
		}
	}
}

// TestRetainedPerUserBounded: retained messages beyond one user's quota
// are refused (MQTT 5 0x97; 3.1.1: connection closed, nothing
// acknowledged); replacing or clearing one's own is allowed; other users
// keep their own quota.
func TestRetainedPerUserBounded(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: limitsConf + "max_retained_per_user 5\nmax_retained_bytes_per_user 2000\n"})
	a := connect(t, tb.addr, as(5, "alice", "a5"))
	for i := 0; i < 5; i++ {
		if got := a.publish(fmt.Sprintf("alice/r/%d", i), "v", 1, true); got.code != 0 {
			t.Fatalf("retained %d: 0x%02x", i, got.code)
		}
	}
	if got := a.publish("alice/r/5", "v", 1, true); got.code != 0x97 {
		t.Errorf("6th retained: 0x%02x, want 0x97", got.code)
	}
	if got := a.publish("alice/r/0", "replaced", 1, true); got.code != 0 {
		t.Errorf("replacing one's own: 0x%02x", got.code)
	}
	if got := a.publish("alice/r/5", "not retained", 1, false); got.code != 0 {
		t.Errorf("non-retained publish: 0x%02x", got.code)
	}
	a4 := connect(t, tb.addr, as(4, "alice", "a4"))
	if code := publishRefused(t, a4, "alice/r/6", true); code != noAck {
		t.Errorf("3.1.1 retained over quota acknowledged: 0x%02x", code)
	}
	if got := a.publish("alice/r/1", "", 1, true); got.code != 0 {
		t.Errorf("clearing: 0x%02x", got.code)
	}
	if got := a.publish("alice/r/7", "v", 1, true); got.code != 0 {
		t.Errorf("retained after clearing one: 0x%02x", got.code)
	}
	if got := a.publish("alice/big", strings.Repeat("b", 2000), 1, true); got.code != 0x97 {
		t.Errorf("retained over the byte quota: 0x%02x, want 0x97", got.code)
	}
	// A retained Will counts too: refused at CONNECT.
	for v, want := range map[byte]byte{5: 0x97, 4: 3} {
		o := as(v, "alice", fmt.Sprintf("will-%d", v))
		o.will = &packets.Packet{TopicName: "alice/will", Payload: []byte("gone"), FixedHeader: packets.FixedHeader{Retain: true}}
		if _, ack := dial(t, tb.addr, o); ack.ReasonCode != want {
			t.Errorf("MQTT %s: retained Will over quota: CONNACK 0x%02x, want 0x%02x", versionName(v), ack.ReasonCode, want)
		}
	}
	b := connect(t, tb.addr, as(5, "bob", "b5"))
	for i := 0; i < 5; i++ {
		if got := b.publish(fmt.Sprintf("bob/r/%d", i), "v", 1, true); got.code != 0 {
			t.Fatalf("bob's retained %d: 0x%02x", i, got.code)
		}
	}
	if _, ok := tb.b.Server().Topics.Retained.Get("alice/r/5"); ok {
		t.Error("a refused retained message is held")
	}
}

// TestProtocolAnswers: exact CONNACK bytes. MQTT 3.1.1 clients only ever
// see 3.1.1 return codes; MQTT 5 protocol errors get 0x82, an
// authentication method Moat does not offer 0x8C.
func TestProtocolAnswers(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_qos 1\n"})
	v4 := func(id string, change func(*packets.Packet)) []byte {
		return encodeConnect(t, as(4, "alice", id), change)
	}
	v5 := func(props []byte) []byte {
		// CONNECT, MQTT 5, username, password, clean start, keepalive
		// 30, client id "p5", alice's credentials.
		body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0xC2, 0, 30, byte(len(props))}
		body = append(body, props...)
		body = append(body, 0, 2, 'p', '5')
		for _, s := range []string{"alice", passwords["alice"]} {
			body = append(body, 0, byte(len(s)))
			body = append(body, s...)
		}
		return append([]byte{0x10, byte(len(body))}, body...)
	}
	tests := []struct {
		name   string
		raw    []byte
		want   []byte // exact answer before the broker closes
		closed bool
	}{
		{"3.1.1 persistent session without a client id", v4("", func(pk *packets.Packet) { pk.Connect.Clean = false }),
			[]byte{0x20, 0x02, 0x00, 0x02}, true},
		{"3.1.1 reserved CONNECT flag set", func() []byte { b := v4("rsv", nil); b[9] |= 1; return b }(), nil, true},
		{"3.1.1 Will QoS above max_qos", v4("wq", func(pk *packets.Packet) {
			pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "alice/w", []byte("x"), 2
		}), nil, true},
		{"MQTT 5 Session Expiry Interval twice", v5([]byte{0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2}), []byte{0x20, 0x03, 0x00, 0x82, 0x00}, true},
		{"MQTT 5 Receive Maximum twice", v5([]byte{0x21, 0, 5, 0x21, 0, 5}), []byte{0x20, 0x03, 0x00, 0x82, 0x00}, true},
		{"MQTT 5 Receive Maximum 0", v5([]byte{0x21, 0, 0}), []byte{0x20, 0x03, 0x00, 0x82, 0x00}, true},
		{"MQTT 5 Maximum Packet Size 0", v5([]byte{0x27, 0, 0, 0, 0}), []byte{0x20, 0x03, 0x00, 0x82, 0x00}, true},
		{"MQTT 5 authentication method", v5([]byte{0x15, 0, 11, 'S', 'C', 'R', 'A', 'M', '-', 'S', 'H', 'A', '-', '1'}),
			[]byte{0x20, 0x06, 0x00, 0x8C, 0x03, 0x21, 0x00, 0x14}, true},
	}
	for _, tt := range tests {
		got, closed := exchange(t, tb.addr, tt.raw, waitLong)
		if !bytes.Equal(got, tt.want) || closed != tt.closed {
			t.Errorf("%s: got % x (closed %v), want % x (closed %v)", tt.name, got, closed, tt.want, tt.closed)
		}
		if len(got) >= 4 && got[0] == 0x20 && tt.raw[8] == 4 && got[3] > 5 {
			t.Errorf("%s: MQTT 3.1.1 CONNACK code 0x%02x", tt.name, got[3])
		}
	}
	connect(t, tb.addr, as(4, "alice", "fine")).ping()
}

// TestWrongPasswordsTakeNoSessionSlot: CONNECTs that fail authentication,
// 200 at once, never count against the user's max_sessions_per_user.
func TestWrongPasswordsTakeNoSessionSlot(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "max_sessions_per_user 3\n"})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				o := opts{v: 4, id: fmt.Sprintf("guess-%d-%d", i, j), user: "alice", hasUser: true, pass: "wrong", hasPass: true, keepalive: 30, local: "127.0.0.9"}
				if c, _, err := mqtttest.Dial(tb.addr, o.options()); err == nil {
					c.Close()
				}
			}
		}(i)
	}
	for i := 0; i < 3; i++ {
		o := as(5, "alice", fmt.Sprintf("legit-%d", i))
		o.persist = true
		connect(t, tb.addr, o).disconnect()
	}
	o := as(4, "alice", "legit-3")
	o.persist = true
	if _, ack := dial(t, tb.addr, o); ack.ReasonCode != 3 {
		t.Errorf("4th session: CONNACK %d, want 3", ack.ReasonCode)
	}
	close(stop)
	wg.Wait()
}

// TestSubscribeDuplicatePropertyClosed: an MQTT 5 SUBSCRIBE with the
// Subscription Identifier twice (or 0) is a protocol error: the
// connection is closed, nothing is subscribed, others are served.
func TestSubscribeDuplicatePropertyClosed(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	for _, props := range [][]byte{{0x0B, 5, 0x0B, 6}, {0x0B, 0}} {
		c := connect(t, tb.addr, as(5, "alice", "dup-sub"))
		body := []byte{0, 1, byte(len(props))}
		body = append(body, props...)
		body = append(body, 0, 7, 'a', 'l', 'i', 'c', 'e', '/', 'x', 1)
		_ = c.WriteBytes(append([]byte{0x82, byte(len(body))}, body...))
		if !c.waitClosed() {
			t.Errorf("properties % x: connection left open", props)
		}
		if c.WaitUntil(time.Millisecond, func(s mqtttest.State) bool {
			for _, pk := range s.Pending {
				if pk.FixedHeader.Type == packets.Suback {
					return true
				}
			}
			return false
		}) {
			t.Errorf("properties % x: answered with a SUBACK", props)
		}
	}
	if n := atomic.LoadInt64(&tb.b.Server().Info.Subscriptions); n != 0 {
		t.Errorf("%d subscriptions held", n)
	}
	connect(t, tb.addr, as(5, "bob", "fine")).mustSubscribe("bob/#")
}
