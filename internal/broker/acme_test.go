package broker_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/moattest/brokertest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// acmeBroker runs Moat with MQTT/TLS and WSS listeners on the ACME
// certificate, against Pebble and a fake Cloudflare API with lego's real
// Cloudflare provider.
type acmeBroker struct {
	b      *broker.Broker
	ca     *acmetest.CA
	pool   *x509.CertPool
	conf   string // moat.conf
	getenv func(string) string
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
	r := brokertest.RunFile(t, path, brokertest.Options{Env: getenv})
	b := r.Broker
	t.Cleanup(func() {
		if strings.Contains(r.Logs.String(), acmetest.Token) {
			t.Error("the Cloudflare token appeared in the logs")
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.RootPEM())
	return &acmeBroker{b: b, ca: ca, pool: pool, conf: path, getenv: getenv}
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
	dialWSS := func() (net.Conn, error) { return mqtttest.DialWS("wss://"+wssAddr.String()+"/mqtt", a.tlsConfig()) }
	tc := mqttDial(t, dialTLS)
	wc := mqttDial(t, dialWSS)
	subscribe(t, tc, "to/tls")
	subscribe(t, wc, "to/wss")
	subscribe(t, pc, "to/plain")

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
		case *mqtttest.WSConn:
			st = cc.TLS()
		}
		return st.PeerCertificates[0].SerialNumber.String()
	}
	exchange := func(round int) {
		msg := fmt.Sprintf("round-%d", round)
		for _, p := range []struct {
			c     *mqtttest.Client
			topic string
		}{{tc, "to/wss"}, {wc, "to/plain"}, {pc, "to/tls"}} {
			if err := p.c.SendPublish(p.topic, []byte(msg), 0, false, 0); err != nil {
				t.Fatalf("publish on %s: %v", p.topic, err)
			}
		}
		for _, c := range []*mqtttest.Client{wc, pc, tc} {
			if got := expectPayload(t, c, 10*time.Second); got != msg {
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

// mqttDial connects an MQTT 3.1.1 client over the connection dial makes.
func mqttDial(t *testing.T, dial func() (net.Conn, error)) *mqtttest.Client {
	t.Helper()
	conn, err := dial()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	c, ack, err := mqtttest.Connect(conn, mqtttest.Options{ClientID: fmt.Sprintf("c%d", time.Now().UnixNano()), KeepAlive: 60})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: 0x%02x %v", ack.ReasonCode, err)
	}
	return c
}

// subscribe subscribes at QoS 0 and requires QoS 0 granted.
func subscribe(t *testing.T, c *mqtttest.Client, filter string) {
	t.Helper()
	if codes := c.Subscribe(t, 0, filter); len(codes) != 1 || codes[0] != 0 {
		t.Fatalf("SUBACK for %s: %v", filter, codes)
	}
}

// expectPayload returns the payload of the next packet, a PUBLISH.
func expectPayload(t *testing.T, c *mqtttest.Client, d time.Duration) string {
	t.Helper()
	pk, err := c.Next(d)
	if err != nil || pk.FixedHeader.Type != packets.Publish {
		t.Fatalf("want PUBLISH, got type %d: %v", pk.FixedHeader.Type, err)
	}
	return string(pk.Payload)
}
