package mqtttest_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// allowHook admits every client and topic.
type allowHook struct{ mqtt.HookBase }

var _ mqtt.Hook = (*allowHook)(nil)

func (h *allowHook) ID() string { return "allow" }
func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

// serve starts mochi on 127.0.0.1 with a TCP listener, and a WebSocket
// endpoint whose connections are handed to mochi.
func serve(t *testing.T) (tcpAddr, wsURL string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	up := websocket.Upgrader{Subprotocols: []string{"mqtt"}}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		_ = srv.EstablishConnection("t", &mqtttest.WSConn{Conn: ws})
	}))
	t.Cleanup(hs.Close)
	return tcp.Address(), "ws" + strings.TrimPrefix(hs.URL, "http") + "/mqtt"
}

func dial(t *testing.T, addr string, o mqtttest.Options) *mqtttest.Client {
	t.Helper()
	c, ack, err := mqtttest.Dial(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if ack.ReasonCode != 0 {
		t.Fatalf("%s: CONNACK 0x%02x", o.ClientID, ack.ReasonCode)
	}
	return c
}

func TestVersionsPublishFlows(t *testing.T) {
	addr, _ := serve(t)
	for _, v := range []byte{3, 4, 5} {
		sub := dial(t, addr, mqtttest.Options{Version: v, ClientID: fmt.Sprint("sub", v), KeepAlive: 30, AutoAck: true, LocalIP: "127.0.0.1"})
		if got := sub.Subscribe(t, 2, "a/#", "b/+"); !slices.Equal(got, []byte{2, 2}) {
			t.Fatalf("v%d: SUBACK %v", v, got)
		}
		pub := dial(t, addr, mqtttest.Options{Version: v, ClientID: fmt.Sprint("pub", v), KeepAlive: 30})
		for _, tc := range []struct {
			qos   byte
			types []byte
			code  byte
		}{
			{0, nil, mqtttest.NoAck},
			{1, []byte{packets.Puback}, 0},
			{2, []byte{packets.Pubrec, packets.Pubcomp}, 0},
		} {
			topic := []string{"a/0", "a/1", "b/2"}[tc.qos]
			got := pub.Publish(t, topic, []byte("x"), tc.qos, false)
			if got.Code != tc.code || !slices.Equal(got.Types, tc.types) {
				t.Errorf("v%d qos %d: %v 0x%02x, want %v 0x%02x", v, tc.qos, got.Types, got.Code, tc.types, tc.code)
			}
			if !sub.WaitTopic(topic) {
				t.Fatalf("v%d: %s not delivered: %v", v, topic, sub.Err())
			}
		}
		// The subscriber answered the QoS 2 delivery itself: a PINGREQ
		// still gets its answer and the QoS 2 message came once.
		sub.Ping(t)
		if m, ok := sub.Message("b/2"); !ok || m.FixedHeader.Qos != 2 || string(m.Payload) != "x" {
			t.Errorf("v%d: b/2 = %+v", v, m.FixedHeader)
		}
		if got := sub.Topics(); !slices.Equal(got, []string{"a/0", "a/1", "b/2"}) {
			t.Errorf("v%d: topics %v", v, got)
		}
		if got := sub.QuietFor(50 * time.Millisecond); len(got) != 0 {
			t.Errorf("v%d: more messages %v", v, got)
		}
		_ = pub.Disconnect()
		_ = sub.Disconnect()
	}
}

func TestNextManualAcksAndTimeout(t *testing.T) {
	addr, _ := serve(t)
	c := dial(t, addr, mqtttest.Options{Version: 5, ClientID: "manual", KeepAlive: 60})
	if err := c.SendSubscribe(7, 1, "m/#"); err != nil {
		t.Fatal(err)
	}
	if pk, err := c.Next(5 * time.Second); err != nil || pk.FixedHeader.Type != packets.Suback || pk.PacketID != 7 {
		t.Fatalf("SUBACK: %v %+v", err, pk)
	}
	if err := c.SendPublish("m/1", []byte("one"), 1, true, 9); err != nil {
		t.Fatal(err)
	}
	// PUBACK and the delivery may come in either order.
	ack, ok := c.WaitPacket(packets.Puback, 9, 5*time.Second)
	if !ok || ack.ReasonCode != 0 {
		t.Fatalf("PUBACK: %v %+v", ok, ack)
	}
	pk, err := c.Next(5 * time.Second)
	if err != nil || pk.FixedHeader.Type != packets.Publish || pk.TopicName != "m/1" {
		t.Fatalf("delivery: %v %+v", err, pk)
	}
	if err := c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Next(50 * time.Millisecond); err != mqtttest.ErrTimeout {
		t.Fatalf("Next on silence: %v, want ErrTimeout", err)
	}
	// Raw bytes: a reserved packet type closes the connection.
	if err := c.WriteBytes([]byte{0xf0, 0}); err != nil {
		t.Fatal(err)
	}
	if !c.WaitClosed() {
		t.Fatal("connection still open after a reserved packet type")
	}
	if _, err := c.Next(time.Second); err == nil || err == mqtttest.ErrTimeout {
		t.Fatalf("Next after close: %v", err)
	}
}

func TestPersistentSessionAndWill(t *testing.T) {
	addr, _ := serve(t)
	watch := dial(t, addr, mqtttest.Options{ClientID: "watch", KeepAlive: 60, AutoAck: true})
	watch.MustSubscribe(t, 1, "will/#")
	o := mqtttest.Options{Version: 5, ClientID: "keep", Persistent: true, SessionExpiry: 3600, KeepAlive: 60,
		Username: "u", Password: "p",
		Will: &mqtttest.Will{Topic: "will/keep", Payload: []byte("gone"), QoS: 1}}
	c := dial(t, addr, o)
	_ = c.Close()
	if !watch.WaitTopic("will/keep") {
		t.Fatal("will not published after an abnormal disconnect")
	}
	again, ack, err := mqtttest.Dial(addr, o)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if !ack.SessionPresent {
		t.Fatal("persistent session not resumed")
	}
	if got := mqtttest.ConnectPacket(o); !got.Connect.PasswordFlag || got.Connect.Clean || !got.Properties.SessionExpiryIntervalFlag {
		t.Fatalf("CONNECT %+v", got.Connect)
	}
	if got := mqtttest.ConnectPacket(mqtttest.Options{UsernameFlag: true, PasswordFlag: true}); !got.Connect.UsernameFlag || !got.Connect.PasswordFlag || got.ProtocolVersion != 4 {
		t.Fatalf("empty credentials CONNECT %+v", got.Connect)
	}
}

func TestWebSocket(t *testing.T) {
	_, url := serve(t)
	ws, err := mqtttest.DialWS(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, ack, err := mqtttest.Connect(ws, mqtttest.Options{ClientID: "ws", KeepAlive: 60, AutoAck: true})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect over WebSocket: %v 0x%02x", err, ack.ReasonCode)
	}
	defer c.Close()
	c.MustSubscribe(t, 1, "ws/#")
	if a := c.Publish(t, "ws/1", make([]byte, 70000), 1, false); a.Code != 0 {
		t.Fatalf("PUBACK 0x%02x", a.Code)
	}
	if m, ok := c.Message("ws/1"); !c.WaitTopic("ws/1") || ok && len(m.Payload) != 70000 {
		t.Fatal("large message not received over WebSocket")
	}
	if _, ok := c.Conn().(net.Conn); !ok || ws.TLS().HandshakeComplete {
		t.Fatal("plain WebSocket reports TLS")
	}
}

func TestDialRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	if _, _, err := mqtttest.Dial(addr, mqtttest.Options{Timeout: 2 * time.Second}); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}

func TestPublishWindow(t *testing.T) {
	addr, _ := serve(t)
	watch := dial(t, addr, mqtttest.Options{ClientID: "watch", KeepAlive: 60, AutoAck: true})
	watch.MustSubscribe(t, 1, "w/#")

	// Until next runs out: every message acknowledged, in flight at most window.
	pub := dial(t, addr, mqtttest.Options{ClientID: "window", KeepAlive: 60})
	n, acks := 0, map[int]byte{}
	next := func() (mqtttest.Msg, bool) {
		n++
		return mqtttest.Msg{Topic: fmt.Sprint("w/", n%7), Payload: []byte("p"), Seq: n}, n <= 500
	}
	var mu sync.Mutex
	err := pub.PublishWindow(8, nil, next, func(m mqtttest.Msg, code byte) {
		mu.Lock()
		acks[m.Seq] = code
		mu.Unlock()
	})
	if err != nil || len(acks) != 500 {
		t.Fatalf("%d of 500 acknowledged: %v", len(acks), err)
	}
	for seq, code := range acks {
		if code != 0 {
			t.Fatalf("message %d: PUBACK 0x%02x", seq, code)
		}
	}
	if !pub.WaitClosed() {
		t.Fatal("connection left open")
	}

	// Until stop: returns with the connection closed.
	pub = dial(t, addr, mqtttest.Options{ClientID: "window-stop", KeepAlive: 60})
	stop := make(chan struct{})
	var count atomic.Int64
	err = pub.PublishWindow(4, stop, func() (mqtttest.Msg, bool) { return mqtttest.Msg{Topic: "w/s"}, true }, func(mqtttest.Msg, byte) {
		if count.Add(1) == 100 {
			close(stop)
		}
	})
	if err != nil || count.Load() < 100 || !pub.WaitClosed() {
		t.Fatalf("stopped after %d acknowledgements: %v", count.Load(), err)
	}
}
