package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/moat-mqtt/moat/internal/moattest"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testAuth admits everyone except the user "bad" and allows every topic.
type testAuth struct{ mqtt.HookBase }

func (h *testAuth) ID() string { return "test-auth" }
func (h *testAuth) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *testAuth) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return string(cl.Properties.Username) != "bad"
}
func (h *testAuth) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

// startBroker runs a mochi server with two TCP listeners ("one", "two") on
// loopback and the metrics hook; it returns their addresses.
func startBroker(t *testing.T, m *Metrics) (*mqtt.Server, map[string]string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{
		Logger:       slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)),
		Capabilities: mqtt.NewDefaultServerCapabilities(),
	})
	if err := srv.AddHook(new(testAuth), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(NewHook(m, RetainedCount(srv)), nil); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for _, id := range []string{"one", "two"} {
		l := listeners.NewTCP(listeners.Config{ID: id, Address: "127.0.0.1:0"})
		if err := srv.AddListener(l); err != nil {
			t.Fatal(err)
		}
		addrs[id] = l.Address()
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, addrs
}

func connect(t *testing.T, addr, user string) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(fmt.Sprintf("%s-%d", user, time.Now().UnixNano())).
		SetUsername(user).SetPassword("x").
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	return c, tok.Error()
}

// eventually polls cond until it holds or 20 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	moattest.Eventually(t, 20*time.Second, what, cond)
}

func TestHookWithRealBroker(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg, "one", "two")
	if err != nil {
		t.Fatal(err)
	}
	srv, addrs := startBroker(t, m)

	sub, err := connect(t, addrs["one"], "sub")
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	if tok := sub.Subscribe("a/#", 1, func(paho.Client, paho.Message) { got.Add(1) }); !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub, err := connect(t, addrs["two"], "pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, addrs["two"], "bad"); err == nil {
		t.Fatal("user bad was admitted")
	}
	conns := func(id string) float64 { return testutil.ToFloat64(m.connections.WithLabelValues(id)) }
	if conns("one") != 1 || conns("two") != 1 {
		t.Fatalf("connections one=%v two=%v, want 1 and 1 (a refused CONNECT must not count)", conns("one"), conns("two"))
	}

	for i := range 3 {
		tok := pub.Publish("a/x", 1, i == 2, []byte("payload"))
		if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	eventually(t, "3 deliveries", func() bool { return got.Load() == 3 })
	eventually(t, "retained gauge", func() bool { return testutil.ToFloat64(m.retained) == 1 })

	pub.Disconnect(100)
	sub.Disconnect(100)
	eventually(t, "connections back to 0", func() bool { return conns("one") == 0 && conns("two") == 0 })

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"messages received on two", m.messagesReceived.WithLabelValues("two"), 3},
		{"messages received on one", m.messagesReceived.WithLabelValues("one"), 0},
		{"messages sent on one", m.messagesSent.WithLabelValues("one"), 3},
		{"messages sent on two", m.messagesSent.WithLabelValues("two"), 0},
	}
	for _, tt := range tests {
		if v := testutil.ToFloat64(tt.c); v != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, v, tt.want)
		}
	}
	// Byte counters must agree with mochi's own wire counters (which include
	// the refused CONNECT and its CONNACK, counted by the hook too).
	sum := func(v *prometheus.CounterVec) float64 {
		return testutil.ToFloat64(v.WithLabelValues("one")) + testutil.ToFloat64(v.WithLabelValues("two"))
	}
	eventually(t, "bytes received match mochi", func() bool {
		return sum(m.bytesReceived) == float64(atomic.LoadInt64(&srv.Info.BytesReceived))
	})
	eventually(t, "bytes sent match mochi", func() bool {
		return sum(m.bytesSent) == float64(atomic.LoadInt64(&srv.Info.BytesSent))
	})
}

func TestPlainMethods(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.AuthFailure("bad_credentials")
	m.AuthFailure("bad_credentials")
	m.AuthFailure("banned")
	m.ACLDenied("publish")
	m.Ban()
	m.StoreCommit(3 * time.Millisecond)
	m.StoreCommit(time.Second)
	exp := time.Unix(1900000000, 0)
	m.CertExpiry("mqtt.example.com", exp)
	m.CertRenewalError(true)
	m.MountState(true)
	m.MountState(false)
	m.ConnectionRefused("memory_limit")
	m.ConnectionRefused("memory_limit")
	m.SetMemoryLimit(1 << 30)

	tests := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"auth bad_credentials", m.authFailures.WithLabelValues("bad_credentials"), 2},
		{"auth banned", m.authFailures.WithLabelValues("banned"), 1},
		{"acl publish", m.aclDenied.WithLabelValues("publish"), 1},
		{"bans", m.bans, 1},
		{"cert expiry", m.certExpiry.WithLabelValues("mqtt.example.com"), float64(exp.Unix())},
		{"renewal error", m.certRenewalError, 1},
		{"mounted", m.mounted, 0},
		{"refused memory", m.refused.WithLabelValues("memory_limit"), 2},
		{"refused per ip", m.refused.WithLabelValues("max_connections_per_ip"), 0},
		{"memory limit", m.memoryLimit, 1 << 30},
	}
	for _, tt := range tests {
		if v := testutil.ToFloat64(tt.c); v != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, v, tt.want)
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP moat_store_commit_seconds Duration of durable store commits.
# TYPE moat_store_commit_seconds histogram
moat_store_commit_seconds_bucket{le="0.0001"} 0
moat_store_commit_seconds_bucket{le="0.0004"} 0
moat_store_commit_seconds_bucket{le="0.0016"} 0
moat_store_commit_seconds_bucket{le="0.0064"} 1
moat_store_commit_seconds_bucket{le="0.0256"} 1
moat_store_commit_seconds_bucket{le="0.1024"} 1
moat_store_commit_seconds_bucket{le="0.4096"} 1
moat_store_commit_seconds_bucket{le="1.6384"} 2
moat_store_commit_seconds_bucket{le="6.5536"} 2
moat_store_commit_seconds_bucket{le="26.2144"} 2
moat_store_commit_seconds_bucket{le="+Inf"} 2
moat_store_commit_seconds_sum 1.003
moat_store_commit_seconds_count 2
`), "moat_store_commit_seconds"); err != nil {
		t.Error(err)
	}
}

func TestNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(reg, "tcp"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	// Only series with a value are gathered before any event.
	want := "moat_bans_total moat_bytes_received_total moat_bytes_sent_total moat_certificate_renewal_error moat_connections moat_connections_refused_total moat_memory_limit_bytes moat_messages_dropped_total moat_messages_received_total moat_messages_sent_total moat_persistence_mounted moat_retained_messages moat_store_commit_seconds"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("metric names:\n got %s\nwant %s", got, want)
	}
}

func TestRegisterTwiceFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg); err == nil {
		t.Fatal("second New on the same registry succeeded")
	}
	if _, err := New(NewRegistry()); err != nil {
		t.Fatalf("New on NewRegistry: %v", err)
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *Metrics
	m.AuthFailure("x")
	m.ACLDenied("x")
	m.Ban()
	m.StoreCommit(time.Second)
	m.CertExpiry("x", time.Now())
	m.CertRenewalError(true)
	m.MountState(true)
	m.SetRetained(1)
	m.ConnectionRefused("memory_limit")
	m.SetMemoryLimit(1)
	h := NewHook(nil, nil)
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Listener: "x"}}
	h.OnSessionEstablished(cl, packets.Packet{})
	h.OnDisconnect(cl, nil, false)
	_, _ = h.OnPacketRead(cl, packets.Packet{})
	h.OnPacketSent(cl, packets.Packet{}, nil)
}

func TestWireSize(t *testing.T) {
	tests := []struct{ remaining, want int }{
		{0, 2}, {127, 129}, {128, 131}, {16383, 16386}, {16384, 16388},
		{2097151, 2097155}, {2097152, 2097157}, {268435455, 268435460},
	}
	for _, tt := range tests {
		if got := wireSize(tt.remaining); got != tt.want {
			t.Errorf("wireSize(%d) = %d, want %d", tt.remaining, got, tt.want)
		}
	}
}

// The packet hooks run for every packet: they must not allocate.
func TestHotPathDoesNotAllocate(t *testing.T) {
	m, err := New(prometheus.NewRegistry(), "tcp")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHook(m, nil)
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Listener: "tcp"}}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Remaining: 300}}
	allocs := testing.AllocsPerRun(1000, func() {
		_, _ = h.OnPacketRead(cl, pk)
		h.OnPacketSent(cl, pk, nil)
		_ = h.Provides(mqtt.OnPacketSent)
	})
	if allocs != 0 {
		t.Fatalf("packet hooks allocate %v times per call", allocs)
	}
}

func BenchmarkPacketHooks(b *testing.B) {
	m, err := New(prometheus.NewRegistry(), "tcp")
	if err != nil {
		b.Fatal(err)
	}
	h := NewHook(m, nil)
	cl := &mqtt.Client{Net: mqtt.ClientConnection{Listener: "tcp"}}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Remaining: 300}}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = h.OnPacketRead(cl, pk)
		h.OnPacketSent(cl, pk, nil)
	}
}

func TestRecordsCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	n := 3
	if err := RegisterRecords(reg, func() map[string]int { return map[string]int{"clients": n, "networks": 1} }); err != nil {
		t.Fatal(err)
	}
	check := func(want string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "moat_client_records"); err != nil {
			t.Error(err)
		}
	}
	head := "# HELP moat_client_records " + recordsHelp + "\n# TYPE moat_client_records gauge\n"
	check(head + "moat_client_records{kind=\"clients\"} 3\nmoat_client_records{kind=\"networks\"} 1\n")
	n = 0
	check(head + "moat_client_records{kind=\"clients\"} 0\nmoat_client_records{kind=\"networks\"} 1\n")
}
