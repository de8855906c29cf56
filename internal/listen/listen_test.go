package listen

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestTransports(t *testing.T) {
	cert, pool := selfSigned(t)
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	tests := []struct {
		name     string
		ws       bool
		tls      bool
		protocol string
		version  byte
	}{
		{"tcp", false, false, "tcp", 4},
		{"tls", false, true, "tcp", 5},
		{"ws", true, false, "ws", 4},
		{"wss", true, true, "wss", 5},
		{"tcp-v3", false, false, "tcp", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{WebSocket: tc.ws, MaxPacketSize: 64 << 10}
			if tc.tls {
				o.TLS = hardened(t, cert)
			}
			_, l := newBroker(t, o)
			if got := l.Protocol(); got != tc.protocol {
				t.Errorf("Protocol() = %q, want %q", got, tc.protocol)
			}
			if l.Address() != l.Addr().String() || strings.HasSuffix(l.Address(), ":0") {
				t.Errorf("Address() = %q, Addr() = %v", l.Address(), l.Addr())
			}
			dial := func() net.Conn {
				switch {
				case tc.ws:
					scheme := "ws"
					if tc.tls {
						scheme = "wss"
					}
					c, _, err := dialWS(t, wsURL(scheme, l, "/mqtt"), clientTLS, nil)
					if err != nil {
						t.Fatal(err)
					}
					return c
				case tc.tls:
					c := tls.Client(dialTCP(t, "", l.Address()), clientTLS)
					return c
				}
				return dialTCP(t, "", l.Address())
			}
			sub := newClient(t, dial(), tc.version)
			sub.connect("sub")
			pub := newClient(t, dial(), tc.version)
			pub.connect("pub")
			roundTrip(t, sub, pub, "t/"+tc.name)
		})
	}
}

func TestHardenedTLSVersions(t *testing.T) {
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }
	tests := []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"", tls.VersionTLS12, false},
		{"tlsv1.2", tls.VersionTLS12, false},
		{"TLSv1.3", tls.VersionTLS13, false},
		{"tlsv1", 0, true},
		{"tlsv1.1", 0, true},
		{"sslv3", 0, true},
	}
	for _, tc := range tests {
		cfg, err := HardenedTLS(getCert, tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err = %v", tc.in, err)
			continue
		}
		if err == nil && cfg.MinVersion != tc.want {
			t.Errorf("%q: MinVersion %x, want %x", tc.in, cfg.MinVersion, tc.want)
		}
	}
	if _, err := HardenedTLS(nil, ""); err == nil {
		t.Error("nil certificate source accepted")
	}
}

// TestTLSOffers checks what the MQTT TLS port negotiates.
func TestTLSOffers(t *testing.T) {
	cert, pool := selfSigned(t)
	shared := hardened(t, cert)
	shared.NextProtos = []string{"h2", "mqtt"} // must not leak into the MQTT port
	_, l := newBroker(t, Options{TLS: shared})
	_, lw := newBroker(t, Options{ID: "wss", TLS: shared, WebSocket: true})
	_, lp := newBroker(t, Options{ID: "plain", TLS: hardened(t, cert)})
	base := func() *tls.Config { return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"} }
	tests := []struct {
		name   string
		addr   string
		cfg    func(*tls.Config)
		ok     bool
		wantNP string
	}{
		{"tls1.0 refused", l.Address(), func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 }, false, ""},
		{"tls1.1 refused", l.Address(), func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11 }, false, ""},
		{"tls1.2 cbc refused", l.Address(), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}
		}, false, ""},
		{"tls1.2 ecdhe gcm", l.Address(), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
		}, true, ""},
		{"tls1.2 ecdhe chacha", l.Address(), func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
		}, true, ""},
		{"tls1.3", l.Address(), func(c *tls.Config) { c.MinVersion = tls.VersionTLS13 }, true, ""},
		{"h2 only refused when mqtt alpn set", l.Address(), func(c *tls.Config) { c.NextProtos = []string{"h2"} }, false, ""},
		{"mqtt alpn preferred over h2", l.Address(), func(c *tls.Config) { c.NextProtos = []string{"h2", "mqtt"} }, true, "mqtt"},
		{"no alpn configured: h2 not negotiated", lp.Address(), func(c *tls.Config) { c.NextProtos = []string{"h2", "http/1.1"} }, true, ""},
		{"wss http/1.1", lw.Address(), func(c *tls.Config) { c.NextProtos = []string{"h2", "http/1.1"} }, true, "http/1.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.cfg(cfg)
			c := tls.Client(dialTCP(t, "", tc.addr), cfg)
			_ = c.SetDeadline(time.Now().Add(ioDeadline))
			err := c.Handshake()
			if (err == nil) != tc.ok {
				t.Fatalf("handshake err = %v, want ok=%v", err, tc.ok)
			}
			if err == nil {
				st := c.ConnectionState()
				if st.NegotiatedProtocol != tc.wantNP {
					t.Errorf("ALPN %q, want %q", st.NegotiatedProtocol, tc.wantNP)
				}
				if st.Version == tls.VersionTLS12 && !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "ECDHE") {
					t.Errorf("suite %s", tls.CipherSuiteName(st.CipherSuite))
				}
			}
		})
	}
	if len(shared.NextProtos) != 2 || shared.NextProtos[0] != "h2" {
		t.Errorf("caller's tls.Config mutated: %v", shared.NextProtos)
	}
}

func TestWebSocketHandshake(t *testing.T) {
	_, l := newBroker(t, Options{
		WebSocket:     true,
		WebSocketPath: "/mqtt",
		Origins:       []string{"https://app.example"},
	})
	tests := []struct {
		name       string
		path       string
		protos     []string
		origin     string
		wantStatus int
		wantProto  string
	}{
		{"mqtt", "/mqtt", []string{"mqtt"}, "", 101, "mqtt"},
		{"mqttv3.1 only", "/mqtt", []string{"mqttv3.1"}, "", 101, "mqttv3.1"},
		{"both", "/mqtt", []string{"mqttv3.1", "mqtt"}, "https://app.example", 101, "mqtt"},
		{"wrong path", "/other", []string{"mqtt"}, "", 404, ""},
		{"bad origin", "/mqtt", []string{"mqtt"}, "https://evil.example", 403, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			if tc.origin != "" {
				hdr.Set("Origin", tc.origin)
			}
			d := dialerWith(tc.protos)
			ws, resp, err := d.Dial(wsURL("ws", l, tc.path), hdr)
			if ws != nil {
				defer ws.Close()
			}
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d (err %v)", resp.StatusCode, tc.wantStatus, err)
			}
			if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != tc.wantProto {
				t.Errorf("subprotocol %q, want %q", got, tc.wantProto)
			}
		})
	}
}

func TestWebSocketTextFrameAndClose(t *testing.T) {
	srv, l := newBroker(t, Options{WebSocket: true, MaxPacketSize: 1024})
	ws, _, err := dialerWith([]string{"mqtt"}).Dial(wsURL("ws", l, "/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(textMessage, connectBytes(t, "txt", 4)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(ioDeadline))
	if _, _, err := ws.ReadMessage(); !isCloseNormal(err) {
		t.Errorf("want a normal close frame, got %v", err)
	}

	// A live session gets a close frame when the listener closes.
	c, _, err := dialWS(t, wsURL("ws", l, "/"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cl := newClient(t, c, 4)
	cl.connect("live")
	pending, _, err := dialerWith([]string{"mqtt"}).Dial(wsURL("ws", l, "/"), nil) // no CONNECT yet
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()
	// What mochi's Server.Close does for this listener.
	l.Close(func(id string) {
		for _, cl := range srv.Clients.GetByListener(id) {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	})
	_ = pending.SetReadDeadline(time.Now().Add(ioDeadline))
	if _, _, err := pending.ReadMessage(); !isCloseNormal(err) {
		t.Errorf("pre-CONNECT session: want a normal close frame, got %v", err)
	}
	// mochi sends DISCONNECT to registered clients, then the close frame follows.
	for {
		_, err := cl.read()
		if err != nil {
			if !isCloseNormal(err) {
				t.Errorf("registered session: want a normal close frame, got %v", err)
			}
			break
		}
	}
}

func TestTrustedProxyClientAddress(t *testing.T) {
	tests := []struct {
		name    string
		trusted []netip.Prefix
		hdr     map[string]string
		want    string // prefix of cl.Net.Remote
	}{
		{"untrusted peer ignores headers", nil, map[string]string{"CF-Connecting-IP": "203.0.113.7"}, "127.0.0.1:"},
		{"trusted cf header", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, map[string]string{"CF-Connecting-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.1"}, "203.0.113.7:"},
		{"trusted xff rightmost untrusted", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8")}, map[string]string{"X-Forwarded-For": "192.0.2.9, 198.51.100.4, 10.1.2.3"}, "198.51.100.4:"},
		{"trusted ipv6 cf", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, map[string]string{"CF-Connecting-IP": "2001:db8::5"}, "[2001:db8::5]:"},
		{"trusted garbage header", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, map[string]string{"CF-Connecting-IP": "nonsense"}, "127.0.0.1:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, l := newBroker(t, Options{WebSocket: true, TrustedProxies: tc.trusted, MaxConnectionsPerIP: 1})
			hdr := http.Header{}
			for k, v := range tc.hdr {
				hdr.Set(k, v)
			}
			c, _, err := dialWS(t, wsURL("ws", l, "/"), nil, hdr)
			if err != nil {
				t.Fatal(err)
			}
			newClient(t, c, 4).connect("proxied")
			cl, ok := srv.Clients.Get("proxied")
			if !ok {
				t.Fatal("client not registered")
			}
			if !strings.HasPrefix(cl.Net.Remote, tc.want) {
				t.Errorf("remote %q, want prefix %q", cl.Net.Remote, tc.want)
			}
		})
	}
}

// TestTrustedProxyPerIPLimit counts the real client behind a proxy, not the proxy.
func TestTrustedProxyPerIPLimit(t *testing.T) {
	_, l := newBroker(t, Options{WebSocket: true, MaxConnectionsPerIP: 1,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	dial := func(ip string) (*http.Response, error) {
		hdr := http.Header{"Cf-Connecting-Ip": {ip}}
		_, resp, err := dialWS(t, wsURL("ws", l, "/"), nil, hdr)
		return resp, err
	}
	if _, err := dial("203.0.113.1"); err != nil {
		t.Fatal(err)
	}
	if resp, err := dial("203.0.113.1"); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection from one client through the proxy: err %v", err)
	}
	if _, err := dial("203.0.113.2"); err != nil {
		t.Fatalf("another client through the same proxy refused: %v", err)
	}
}

func TestPerIPCap(t *testing.T) {
	const capPerIP, flood = 50, 2000
	_, l := newBroker(t, Options{MaxConnectionsPerIP: capPerIP})
	conns := make([]net.Conn, 0, flood)
	for range flood {
		d := net.Dialer{Timeout: ioDeadline}
		c, err := d.Dial("tcp", l.Address())
		if err != nil {
			t.Fatalf("dial after %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	eventually(t, "flood accepted or refused", func() bool { n, _ := l.Stats(); return n == capPerIP })

	// The well-behaved client from another address still gets in.
	good := newClient(t, dialTCP(t, "127.0.0.2", l.Address()), 4)
	good.connect("good")
	// A flooding address's slots are full: its next connection is closed.
	waitClosed(t, dialTCP(t, "127.0.0.1", l.Address()))

	for _, c := range conns {
		_ = c.Close()
	}
	_ = good.Conn().Close()
	eventually(t, "slots released", func() bool { n, e := l.Stats(); return n == 0 && e == 0 })
}

func TestTotalCapAndRate(t *testing.T) {
	t.Run("total", func(t *testing.T) {
		_, l := newBroker(t, Options{MaxConnections: 2})
		a := newClient(t, dialTCP(t, "127.0.0.3", l.Address()), 4)
		a.connect("a")
		b := newClient(t, dialTCP(t, "127.0.0.4", l.Address()), 4)
		b.connect("b")
		waitClosed(t, dialTCP(t, "127.0.0.5", l.Address()))
		_ = a.Conn().Close()
		eventually(t, "slot released", func() bool { n, _ := l.Stats(); return n == 1 })
		newClient(t, dialTCP(t, "127.0.0.5", l.Address()), 4).connect("c")
	})
	t.Run("rate", func(t *testing.T) {
		// A rate this low cannot refill within the test.
		_, l := newBroker(t, Options{ConnectRate: 0.001, ConnectBurst: 3})
		for i := range 3 {
			newClient(t, dialTCP(t, "127.0.0.6", l.Address()), 4).connect(fmt.Sprint("r", i))
		}
		waitClosed(t, dialTCP(t, "127.0.0.6", l.Address()))
		newClient(t, dialTCP(t, "127.0.0.7", l.Address()), 4).connect("other")
	})
}

func TestConnectTimeout(t *testing.T) {
	_, l := newBroker(t, Options{ConnectTimeout: 300 * time.Millisecond})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		waitClosed(t, dialTCP(t, "", l.Address()))
	})
	t.Run("one byte at a time", func(t *testing.T) {
		t.Parallel()
		c := dialTCP(t, "", l.Address())
		connect := connectBytes(t, "slow", 4)
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			waitClosed(t, c)
		}()
		for _, b := range connect[:len(connect)-1] {
			select {
			case <-closed:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := c.Write([]byte{b}); err != nil {
				break
			}
		}
		<-closed
	})
	t.Run("connected client outlives the connect deadline", func(t *testing.T) {
		t.Parallel()
		c := newClient(t, dialTCP(t, "", l.Address()), 4)
		c.connect("patient")
		time.Sleep(600 * time.Millisecond) // past ConnectTimeout: mochi's keepalive deadline rules now
		c.subscribe("still/here")
	})
}

func TestFramingViolationsCloseConnection(t *testing.T) {
	srv, l := newBroker(t, Options{MaxPacketSize: 1024})
	tests := []struct {
		name  string
		after []byte
	}{
		{"oversized publish", append([]byte{0x30, 0x80, 0x10}, make([]byte, 64)...)},
		{"remaining length overflow", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"endless continuation", []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, dialTCP(t, "", l.Address()), 4)
			c.connect("bad")
			if _, err := c.Conn().Write(tc.after); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, c.Conn())
		})
	}
	t.Run("oversized connect", func(t *testing.T) {
		c := dialTCP(t, "", l.Address())
		_, _ = c.Write([]byte{0x10, 0xff, 0x7f})
		waitClosed(t, c)
	})
	t.Run("first packet not connect", func(t *testing.T) {
		c := dialTCP(t, "", l.Address())
		_, _ = c.Write([]byte{0xc0, 0x00})
		waitClosed(t, c)
	})
	sub := newClient(t, dialTCP(t, "", l.Address()), 4)
	sub.connect("s")
	pub := newClient(t, dialTCP(t, "", l.Address()), 4)
	pub.connect("p")
	roundTrip(t, sub, pub, "after/violations")
	eventually(t, "bad clients gone", func() bool { return srv.Clients.Len() == 2 })
}

// mochi501 is the packet from mochi #501: an MQTT 5 SUBSCRIBE whose filter
// "a" ends the packet without its subscription options byte, so
// SubscribeDecode indexes one past the end of the buffer.
var mochi501 = []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'}

func TestMochi501(t *testing.T) {
	for _, frameCheck := range []bool{true, false} {
		t.Run(fmt.Sprint("frameCheck=", frameCheck), func(t *testing.T) {
			var logs logBuffer
			srv, l := newBrokerTweak(t, Options{Logger: newLogger(&logs)}, func(l *Listener) { l.skipFrameCheck = !frameCheck })

			evil := newClient(t, dialTCP(t, "", l.Address()), 5)
			evil.connect("evil")
			if _, err := evil.Conn().Write(mochi501); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, evil.Conn())

			sub := newClient(t, dialTCP(t, "", l.Address()), 5)
			sub.connect("sub")
			pub := newClient(t, dialTCP(t, "", l.Address()), 5)
			pub.connect("pub")
			roundTrip(t, sub, pub, "still/alive")

			if !frameCheck {
				eventually(t, "panic log", func() bool { return hasLine(logs.String(), "client session panicked") > 0 })
			}
			panics := hasLine(logs.String(), "client session panicked")
			if frameCheck && panics != 0 {
				t.Errorf("frame check let the packet through; %d panics logged", panics)
			}
			if !frameCheck && panics != 1 {
				t.Errorf("want the panic logged once, got %d:\n%s", panics, logs.String())
			}
			if !frameCheck && !strings.Contains(logs.String(), evil.Conn().LocalAddr().String()) {
				t.Errorf("panic log lacks the remote address")
			}
			if _, ok := srv.Clients.Get("evil"); ok && frameCheck {
				eventually(t, "evil client removed", func() bool { _, ok := srv.Clients.Get("evil"); return !ok })
			}
		})
	}
}

// panicHook panics on SUBSCRIBE to "boom", after mochi registered the client
// and a first subscription.
type panicHook struct{ mqtt.HookBase }

func (h *panicHook) ID() string { return "panic" }
func (h *panicHook) Provides(b byte) bool {
	return b == mqtt.OnSubscribe
}
func (h *panicHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	for _, f := range pk.Filters {
		if f.Filter == "boom" {
			panic("test hook panic")
		}
	}
	return pk
}

func TestPanicRecoveryAndCleanup(t *testing.T) {
	var logs logBuffer
	var srv *mqtt.Server
	var cleaned atomic.Int32
	onPanic := func(remote string, conn net.Conn) {
		// What the broker does: drop the registration mochi left behind.
		for _, cl := range srv.Clients.GetAll() {
			if cl.Net.Conn == conn {
				srv.UnsubscribeClient(cl)
				cl.ClearInflights()
				srv.Clients.Delete(cl.ID)
				cleaned.Add(1)
			}
		}
	}
	srv, l := newBroker(t, Options{Logger: newLogger(&logs), OnPanic: onPanic}, new(panicHook))

	bystander := newClient(t, dialTCP(t, "", l.Address()), 4)
	bystander.connect("bystander")

	victim := newClient(t, dialTCP(t, "", l.Address()), 4)
	victim.connect("victim")
	victim.subscribe("victim/topic")
	if n := len(srv.Topics.Subscribers("victim/topic").Subscriptions); n != 1 {
		t.Fatalf("subscribers before = %d", n)
	}
	if err := victim.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    2,
		Filters:     packets.Subscriptions{{Filter: "boom"}},
	}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, victim.Conn())

	eventually(t, "cleanup", func() bool { return cleaned.Load() == 1 })
	if _, ok := srv.Clients.Get("victim"); ok {
		t.Error("victim still registered")
	}
	if n := len(srv.Topics.Subscribers("victim/topic").Subscriptions); n != 0 {
		t.Errorf("victim subscriptions left: %d", n)
	}
	eventually(t, "connected counter", func() bool { return atomic.LoadInt64(&srv.Info.ClientsConnected) == 1 })
	if got := hasLine(logs.String(), "client session panicked"); got != 1 {
		t.Errorf("panic logged %d times", got)
	}
	pub := newClient(t, dialTCP(t, "", l.Address()), 4)
	pub.connect("pub")
	roundTrip(t, bystander, pub, "after/panic")
	if srv.Clients.Len() != 2 {
		t.Errorf("clients = %d, want 2", srv.Clients.Len())
	}
}

// flakyListener fails Accept with transient errors a number of times.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	seen  int
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.mu.Lock()
	if f.fails > 0 {
		f.fails--
		f.seen++
		f.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

func TestAcceptBackoff(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: raw, fails: 8}
	var logs logBuffer
	_, l := newBroker(t, Options{Listener: fl, Logger: newLogger(&logs)})
	newClient(t, dialTCP(t, "", l.Address()), 4).connect("after-emfile")
	fl.mu.Lock()
	seen := fl.seen
	fl.mu.Unlock()
	if seen != 8 {
		t.Errorf("accept errors seen %d, want 8", seen)
	}
	if !strings.Contains(logs.String(), "too many open files") {
		t.Error("accept errors not logged")
	}
}

func TestCloseStopsServe(t *testing.T) {
	for _, ws := range []bool{false, true} {
		l, err := New(Options{ID: "c", Address: "127.0.0.1:0", WebSocket: ws})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Init(nil); err != nil {
			t.Fatal(err)
		}
		served := make(chan struct{})
		go func() {
			l.Serve(func(string, net.Conn) error { return nil })
			close(served)
		}()
		pending := dialTCP(t, "", l.Address())
		var closedIDs []string
		l.Close(func(id string) { closedIDs = append(closedIDs, id) })
		l.Close(func(id string) { closedIDs = append(closedIDs, id) })
		select {
		case <-served:
		case <-time.After(ioDeadline):
			t.Fatal("Serve did not return after Close")
		}
		if len(closedIDs) != 1 || closedIDs[0] != "c" {
			t.Errorf("closeClients calls %v", closedIDs)
		}
		waitClosed(t, pending)
	}
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"no id", Options{Address: ":0"}},
		{"no address", Options{ID: "x"}},
		{"bad network", Options{ID: "x", Address: ":0", Network: "udp"}},
		{"bad path", Options{ID: "x", Address: ":0", WebSocketPath: "mqtt"}},
		{"wildcard origin", Options{ID: "x", Address: ":0", Origins: []string{"*"}}},
		{"negative", Options{ID: "x", Address: ":0", MaxConnections: -1}},
	}
	for _, tc := range tests {
		if _, err := New(tc.o); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

func TestUnixSocket(t *testing.T) {
	path := t.TempDir() + "/mqtt.sock"
	_, l := newBroker(t, Options{Network: "unix", Address: path, MaxConnections: 5, MaxConnectionsPerIP: 1})
	if l.Protocol() != "unix" {
		t.Errorf("protocol %q", l.Protocol())
	}
	dial := func() net.Conn {
		c, err := net.DialTimeout("unix", path, ioDeadline)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	// Per-IP limits do not apply to unix peers (they have no IP).
	a := newClient(t, dial(), 4)
	a.connect("a")
	b := newClient(t, dial(), 4)
	b.connect("b")
	roundTrip(t, a, b, "unix/t")
}

func isCloseNormal(err error) bool {
	var ce *websocketCloseError
	return errors.As(err, &ce) && ce.Code == closeNormal
}

// With Options.CloseClients, Close disconnects the listener's clients
// through it and never through mochi's callback, whose client list read
// lock is taken twice and deadlocks against a client leaving meanwhile.
func TestCloseUsesOwnClientDisconnect(t *testing.T) {
	var own []string
	l, err := New(Options{ID: "own", Address: "127.0.0.1:0", CloseClients: func(id string) { own = append(own, id) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Init(nil); err != nil {
		t.Fatal(err)
	}
	go l.Serve(func(string, net.Conn) error { return nil })
	l.Close(func(string) { t.Error("mochi's client disconnect called") })
	if len(own) != 1 || own[0] != "own" {
		t.Errorf("CloseClients calls %v, want [own]", own)
	}
}
