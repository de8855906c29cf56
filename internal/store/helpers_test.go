package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// allowHook lets every client in (mochi's auth.AllowHook pulls in a YAML
// module this build does not otherwise need).
type allowHook struct{ mqtt.HookBase }

func (h *allowHook) ID() string { return "allow" }
func (h *allowHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *allowHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *allowHook) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

const testDeadline = 30 * time.Second

func openStore(t testing.TB, dir string, o Options) *Store {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	o.Root = root
	st, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

type broker struct {
	srv   *mqtt.Server
	st    *Store
	addr  string
	stats Stats
}

func newServer() *mqtt.Server {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = 0
	return mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       slog.New(slog.DiscardHandler),
	})
}

// startBroker restores st into a fresh server and serves it on loopback.
func startBroker(t testing.TB, st *Store) *broker {
	t.Helper()
	srv := newServer()
	if err := srv.AddHook(new(allowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(st.Hook(), nil); err != nil {
		t.Fatal(err)
	}
	stats, err := st.Restore(srv)
	if err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	b := &broker{srv: srv, st: st, addr: tcp.Address(), stats: stats}
	t.Cleanup(func() { b.stop(t) })
	return b
}

// stop closes the server, then the store (which flushes what is queued).
func (b *broker) stop(t testing.TB) {
	if b.srv == nil {
		return
	}
	b.srv.Close()
	b.srv = nil
	if err := b.st.Close(); err != nil && !errors.Is(err, errInjected) {
		t.Errorf("close store: %v", err)
	}
}

var errInjected = errors.New("injected write error")

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// v5 client (paho.golang)

type v5client struct {
	c    *paho.Client
	msgs chan *paho.Publish
}

func dialV5(t testing.TB, addr, id string, cleanStart bool, expiry uint32) *v5client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *paho.Publish, 1024)
	c := paho.NewClient(paho.ClientConfig{
		ClientID: id,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			msgs <- pr.Packet
			return true, nil
		}},
		OnClientError: func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	cp := &paho.Connect{ClientID: id, CleanStart: cleanStart, KeepAlive: 30}
	if expiry > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	if _, err := c.Connect(ctx, cp); err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return &v5client{c: c, msgs: msgs}
}

func (c *v5client) publish(topic string, payload []byte, qos byte, retain bool) (*paho.PublishResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	return c.c.Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
}

func (c *v5client) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	if _, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func (c *v5client) next(t testing.TB) *paho.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(testDeadline):
		t.Fatal("no message received")
		return nil
	}
}

// raw MQTT 3.1.1 client built on mochi's packet codecs

type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
	pid  uint16
}

func dialRaw(addr, id string, clean bool) (*rawClient, error) {
	conn, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		return nil, err
	}
	c := &rawClient{conn: conn, r: bufio.NewReader(conn)}
	err = c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"),
			Clean:        clean, ClientIdentifier: id, Keepalive: 60,
		},
	})
	if err == nil {
		var pk packets.Packet
		if pk, err = c.read(); err == nil && (pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0) {
			err = fmt.Errorf("connack: type %d code %d", pk.FixedHeader.Type, pk.ReasonCode)
		}
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *rawClient) close() { c.conn.Close() }

func (c *rawClient) send(pk packets.Packet) error {
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		err = fmt.Errorf("raw client cannot send type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	c.conn.SetWriteDeadline(time.Now().Add(testDeadline))
	_, err = c.conn.Write(buf.Bytes())
	return err
}

func (c *rawClient) read() (packets.Packet, error) {
	c.conn.SetReadDeadline(time.Now().Add(testDeadline))
	pk := packets.Packet{ProtocolVersion: 4}
	hb, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	}
	return pk, err
}

// publishQoS1 sends a QoS 1 publish and reports whether it was acknowledged.
func (c *rawClient) publishQoS1(topic string, payload []byte, retain bool) error {
	c.pid++
	if c.pid == 0 {
		c.pid = 1
	}
	err := c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: retain},
		TopicName:   topic, PacketID: c.pid, Payload: payload,
	})
	if err != nil {
		return err
	}
	pk, err := c.read()
	if err != nil {
		return err
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != c.pid {
		return fmt.Errorf("expected PUBACK %d, got type %d id %d", c.pid, pk.FixedHeader.Type, pk.PacketID)
	}
	return nil
}
