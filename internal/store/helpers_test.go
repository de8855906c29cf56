package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
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
	moattest.Eventually(t, testDeadline, what, cond)
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

// dialRaw connects an MQTT 3.1.1 client and requires the CONNACK to accept it.
func dialRaw(addr, id string, clean bool) (*mqtttest.Client, error) {
	c, ack, err := mqtttest.Dial(addr, mqtttest.Options{ClientID: id, Persistent: !clean, KeepAlive: 60, Timeout: testDeadline})
	if err != nil {
		return nil, err
	}
	if ack.ReasonCode != 0 {
		c.Close()
		return nil, fmt.Errorf("connack: code %d", ack.ReasonCode)
	}
	return c, nil
}

// publishQoS1 sends a QoS 1 publish and reports whether the next packet
// acknowledged it.
func publishQoS1(c *mqtttest.Client, topic string, payload []byte, retain bool) error {
	id := c.NextID()
	if err := c.SendPublish(topic, payload, 1, retain, id); err != nil {
		return err
	}
	pk, err := c.Next(testDeadline)
	if err != nil {
		return err
	}
	if pk.FixedHeader.Type != packets.Puback || pk.PacketID != id {
		return fmt.Errorf("expected PUBACK %d, got type %d id %d", id, pk.FixedHeader.Type, pk.PacketID)
	}
	return nil
}
