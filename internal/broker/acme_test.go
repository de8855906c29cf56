package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/config"
)

// acmeBroker runs Moat with MQTT/TLS and WSS listeners on the ACME
// certificate, against Pebble and a fake Cloudflare API with lego's real
// Cloudflare provider.
type acmeBroker struct {
	b    *broker.Broker
	ca   *acmetest.CA
	pool *x509.CertPool
}

func startACMEBroker(t *testing.T) *acmeBroker {
	t.Helper()
	acmetest.SetEnv(t)
	cf := acmetest.NewCloudflare(t)
	ca := acmetest.NewCA(t, cf.DNSAddr)
	dir := t.TempDir()
	conf := fmt.Sprintf(`listener 0 127.0.0.1
listener 0 127.0.0.1
tls acme
listener 0 127.0.0.1
protocol websockets
tls acme
allow_anonymous true
admin_listener off
acme_domain mqtt.%s
acme_directory %s
acme_profile %s
acme_dns_resolvers %s
acme_dns_propagation_check false
acme_state_dir %s
`, acmetest.Zone, ca.DirURL, acmetest.Profile, cf.DNSAddr, filepath.Join(dir, "acme"))
	path := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"CLOUDFLARE_DNS_API_TOKEN": acmetest.Token,
		"CLOUDFLARE_BASE_URL":      cf.BaseURL,
		"LEGO_CA_CERTIFICATES":     ca.RootsFile,
	}
	getenv := func(k string) string { return env[k] }
	cfg, err := config.Load(path, getenv)
	if err != nil {
		t.Fatal(err)
	}
	lw := &lockedWriter{w: &bytes.Buffer{}}
	b, err := broker.New(broker.Options{Config: cfg, Env: getenv, Logger: slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b.Close(ctx)
		if strings.Contains(lw.String(), acmetest.Token) {
			t.Error("the Cloudflare token appeared in the logs")
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.RootPEM())
	return &acmeBroker{b: b, ca: ca, pool: pool}
}

func (a *acmeBroker) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: a.pool, ServerName: "mqtt." + acmetest.Zone}
}

// waitAddr polls until a listener is open.
func waitAddr(t *testing.T, b *broker.Broker, id string, d time.Duration) net.Addr {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if a := b.Addr(id); a != nil {
			return a
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("listener %s did not open within %s", id, d)
	return nil
}

func TestACMEListenersOpenWhenReadyAndSwapWithoutDrops(t *testing.T) {
	a := startACMEBroker(t)
	// The plain listener serves while the certificate is being obtained.
	plain := waitAddr(t, a.b, "mqtt:127.0.0.1:0", 5*time.Second)
	pc := mqttDial(t, func() (net.Conn, error) { return net.Dial("tcp", plain.String()) })
	start := time.Now()
	tlsAddr := waitAddr(t, a.b, "mqtts:127.0.0.1:0", 60*time.Second)
	wssAddr := waitAddr(t, a.b, "wss:127.0.0.1:0", 5*time.Second)
	t.Logf("TLS listeners open %s after the plain one", time.Since(start).Round(time.Millisecond))

	// The certificate's expiry is exported as a metric.
	deadline := time.Now().Add(10 * time.Second)
	for certExpiryMetric(t, a.b) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if exp := certExpiryMetric(t, a.b); exp < float64(time.Now().Add(24*time.Hour).Unix()) {
		t.Fatalf("moat_certificate_expiry_timestamp_seconds = %v", exp)
	}

	dialTLS := func() (net.Conn, error) { return tls.Dial("tcp", tlsAddr.String(), a.tlsConfig()) }
	dialWSS := func() (net.Conn, error) { return wsDial("wss://"+wssAddr.String()+"/mqtt", a.tlsConfig()) }
	tc := mqttDial(t, dialTLS)
	wc := mqttDial(t, dialWSS)
	tc.subscribe(t, "to/tls")
	wc.subscribe(t, "to/wss")
	pc.subscribe(t, "to/plain")

	serial := func(dial func() (net.Conn, error)) string {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var st tls.ConnectionState
		switch cc := c.(type) {
		case *tls.Conn:
			st = cc.ConnectionState()
		case *wsNetConn:
			st = cc.tls
		}
		return st.PeerCertificates[0].SerialNumber.String()
	}
	exchange := func(round int) {
		msg := fmt.Sprintf("round-%d", round)
		tc.publish(t, "to/wss", msg)
		wc.publish(t, "to/plain", msg)
		pc.publish(t, "to/tls", msg)
		for _, c := range []*rawClient{wc, pc, tc} {
			if got := c.expect(t, 10*time.Second); got != msg {
				t.Fatalf("round %d: received %q", round, got)
			}
		}
	}
	exchange(0)
	prevTLS, prevWSS := serial(dialTLS), serial(dialWSS)
	if prevTLS != prevWSS {
		t.Fatalf("TLS and WSS serve different certificates: %s %s", prevTLS, prevWSS)
	}
	for round := 1; round <= 3; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := a.b.ACME().Renew(ctx)
		cancel()
		if err != nil {
			t.Fatalf("renewal %d: %v", round, err)
		}
		nowTLS, nowWSS := serial(dialTLS), serial(dialWSS)
		if nowTLS == prevTLS || nowWSS != nowTLS {
			t.Fatalf("renewal %d: serials TLS %s WSS %s, before %s", round, nowTLS, nowWSS, prevTLS)
		}
		prevTLS = nowTLS
		// Connected clients never noticed.
		exchange(round)
	}
}

func certExpiryMetric(t *testing.T, b *broker.Broker) float64 {
	t.Helper()
	mfs, err := b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "moat_certificate_expiry_timestamp_seconds" && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return 0
}

// rawClient is a minimal MQTT 3.1.1 client over any net.Conn.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
	id   uint16
}

func mqttDial(t *testing.T, dial func() (net.Conn, error)) *rawClient {
	t.Helper()
	conn, err := dial()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{conn: conn, r: bufio.NewReader(conn)}
	c.write(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60,
			ClientIdentifier: fmt.Sprintf("c%d", time.Now().UnixNano()),
		},
	})
	if typ, body := c.read(t, 10*time.Second); typ != packets.Connack || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: type %d body %v", typ, body)
	}
	return c
}

func (c *rawClient) write(t *testing.T, pk packets.Packet) {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// read returns the next packet's type and body.
func (c *rawClient) read(t *testing.T, d time.Duration) (byte, []byte) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(d))
	h, err := c.r.ReadByte()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		n += int(b&127) * mul
		mul *= 128
		if b < 128 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		t.Fatalf("read: %v", err)
	}
	return h >> 4, body
}

func (c *rawClient) subscribe(t *testing.T, filter string) {
	t.Helper()
	c.id++
	c.write(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 4, PacketID: c.id,
		Filters: packets.Subscriptions{{Filter: filter}},
	})
	if typ, body := c.read(t, 10*time.Second); typ != packets.Suback || body[len(body)-1] != 0 {
		t.Fatalf("SUBACK for %s: type %d body %v", filter, typ, body)
	}
}

func (c *rawClient) publish(t *testing.T, topic, payload string) {
	t.Helper()
	c.write(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish},
		ProtocolVersion: 4, TopicName: topic, Payload: []byte(payload),
	})
}

// expect returns the payload of the next PUBLISH.
func (c *rawClient) expect(t *testing.T, d time.Duration) string {
	t.Helper()
	typ, body := c.read(t, d)
	if typ != packets.Publish || len(body) < 2 {
		t.Fatalf("want PUBLISH, got type %d", typ)
	}
	tl := int(body[0])<<8 | int(body[1])
	return string(body[2+tl:])
}

// wsNetConn adapts a WebSocket connection to net.Conn.
type wsNetConn struct {
	*websocket.Conn
	tls tls.ConnectionState
	r   io.Reader
}

func wsDial(url string, cfg *tls.Config) (net.Conn, error) {
	d := websocket.Dialer{TLSClientConfig: cfg, Subprotocols: []string{"mqtt"}, HandshakeTimeout: 10 * time.Second}
	ws, resp, err := d.Dial(url, http.Header{})
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	c := &wsNetConn{Conn: ws}
	if tc, ok := ws.NetConn().(*tls.Conn); ok {
		c.tls = tc.ConnectionState()
	}
	return c, nil
}

func (c *wsNetConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsNetConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// lockedWriter serialises log writes from many goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
