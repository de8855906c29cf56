package listen

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

const ioDeadline = 10 * time.Second

// logBuffer collects log output for assertions.
type logBuffer = moattest.LogBuffer

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newBroker starts a mochi server (allow-all auth) with one listener built
// from o. Extra hooks are added after the auth hook.
func newBroker(t testing.TB, o Options, hooks ...mqtt.Hook) (*mqtt.Server, *Listener) {
	t.Helper()
	return newBrokerTweak(t, o, nil, hooks...)
}

// newBrokerTweak is newBroker with a chance to adjust the listener before it serves.
func newBrokerTweak(t testing.TB, o Options, tweak func(*Listener), hooks ...mqtt.Hook) (*mqtt.Server, *Listener) {
	t.Helper()
	if o.ID == "" {
		o.ID = "t1"
	}
	if o.Address == "" && o.Listener == nil {
		o.Address = "127.0.0.1:0"
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 256
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler), Capabilities: caps})
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := srv.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(l)
	}
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv, l
}

// selfSigned returns a fresh ECDSA P-256 certificate for 127.0.0.1 and
// the pool that verifies it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	ca := moattest.NewCA(t)
	return ca.Issue(t, "127.0.0.1"), ca.Pool()
}

func hardened(t testing.TB, cert tls.Certificate) *tls.Config {
	t.Helper()
	cfg, err := HardenedTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, "tlsv1.2")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// client is a raw MQTT client (internal/mqtttest) whose helpers fail t.
type client struct {
	*mqtttest.Client
	t testing.TB
}

func newClient(t testing.TB, c net.Conn, version byte) *client {
	return &client{Client: mqtttest.New(c, mqtttest.Options{Version: version, KeepAlive: 60, Timeout: ioDeadline}), t: t}
}

func dialTCP(t testing.TB, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: ioDeadline}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// dialWS opens a WebSocket client connection and adapts it to net.Conn.
func dialWS(t testing.TB, url string, tlsCfg *tls.Config, hdr http.Header) (net.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: ioDeadline, TLSClientConfig: tlsCfg, Subprotocols: []string{"mqtt"}}
	ws, resp, err := d.Dial(url, hdr)
	if err != nil {
		return nil, resp, err
	}
	c := &wsConn{ws: ws, nc: ws.NetConn(), remote: ws.RemoteAddr()}
	t.Cleanup(func() { _ = c.Close() })
	return c, resp, nil
}

func (c *client) send(pk packets.Packet) error { return c.Write(pk) }

// read returns the next packet.
func (c *client) read() (packets.Packet, error) { return c.Next(ioDeadline) }

// expect reads until a packet of type typ arrives.
func (c *client) expect(typ byte) packets.Packet {
	c.t.Helper()
	for {
		pk, err := c.read()
		if err != nil {
			c.t.Fatalf("waiting for packet type %d: %v", typ, err)
		}
		if pk.FixedHeader.Type == typ {
			return pk
		}
	}
}

func (c *client) connect(id string) {
	c.t.Helper()
	if err := c.send(connectPacket(id, c.Version())); err != nil {
		c.t.Fatal(err)
	}
	ack := c.expect(packets.Connack)
	if ack.ReasonCode != 0 {
		c.t.Fatalf("CONNACK reason %#x", ack.ReasonCode)
	}
}

// connectConn sends a CONNECT on c and reads the CONNACK in place: no
// client goroutine or buffer stays behind, so benchmarks measure the
// server's side.
func connectConn(t testing.TB, c net.Conn, id string, version byte) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(ioDeadline))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write(connectBytes(t, id, version)); err != nil {
		t.Fatal(err)
	}
	// The broker sends nothing after the CONNACK until spoken to.
	ack, err := mqtttest.ReadPacket(bufio.NewReaderSize(c, 16), version)
	if err != nil || ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d reason %#x: %v", ack.FixedHeader.Type, ack.ReasonCode, err)
	}
}

func connectPacket(id string, version byte) packets.Packet {
	return mqtttest.ConnectPacket(mqtttest.Options{Version: version, ClientID: id, KeepAlive: 60})
}

func connectBytes(t testing.TB, id string, version byte) []byte {
	t.Helper()
	b, err := mqtttest.Encode(connectPacket(id, version), version)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (c *client) subscribe(filter string) {
	c.t.Helper()
	if err := c.SendSubscribe(1, 0, filter); err != nil {
		c.t.Fatal(err)
	}
	c.expect(packets.Suback)
}

func (c *client) publish(topic, payload string) {
	c.t.Helper()
	if err := c.SendPublish(topic, []byte(payload), 0, false, 0); err != nil {
		c.t.Fatal(err)
	}
}

// roundTrip checks that a subscriber on sub receives a message published on pub.
func roundTrip(t testing.TB, sub, pub *client, topic string) {
	t.Helper()
	sub.subscribe(topic)
	pub.publish(topic, "hello "+topic)
	got := sub.expect(packets.Publish)
	if got.TopicName != topic || string(got.Payload) != "hello "+topic {
		t.Fatalf("received %q %q", got.TopicName, got.Payload)
	}
}

// waitClosed reads until the peer closes the connection or the deadline hits.
func waitClosed(t testing.TB, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioDeadline))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("connection still open after %v", ioDeadline)
		}
		return
	}
}

// eventually polls cond until it holds or ioDeadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	moattest.Eventually(t, ioDeadline, what, cond)
}

func wsURL(scheme string, l *Listener, path string) string {
	return scheme + "://" + l.Address() + path
}

func hasLine(logs, substr string) int {
	return strings.Count(logs, substr)
}

const (
	textMessage = websocket.TextMessage
	closeNormal = websocket.CloseNormalClosure
)

type websocketCloseError = websocket.CloseError

func dialerWith(protos []string) *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: ioDeadline, Subprotocols: protos}
}

// allowHook admits every client and topic (mochi's auth.AllowHook pulls in a
// YAML dependency this module does not carry).
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "allow" }
func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
