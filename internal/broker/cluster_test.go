package broker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/cluster/natstest"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// clusterConf joins a broker to the NATS cluster as node name.
func clusterConf(nc *natstest.Cluster, name string) string {
	return fmt.Sprintf("cluster_nats %s\ncluster_name t\ncluster_node_name %s\ncluster_replicas %d\n", nc.URLs(), name, len(nc.Nodes))
}

// startNodes starts one Moat per name on the NATS cluster, all with s.
func startNodes(t *testing.T, nc *natstest.Cluster, s setup, names ...string) []*testBroker {
	t.Helper()
	var out []*testBroker
	conf := s.conf
	for _, n := range names {
		s.conf = conf + clusterConf(nc, n)
		out = append(out, startBroker(t, s))
	}
	return out
}

// waitRouted publishes QoS 0 probes on topic from pub until sub receives
// one: the subscription's interest has then crossed the NATS cluster.
func waitRouted(t *testing.T, pub, sub *client, topic string) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !slices.Contains(sub.topics(), topic) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached the other node", topic)
		}
		pub.publish(topic, "probe", 0, false)
		sub.WaitUntil(50*time.Millisecond, func(s mqtttest.State) bool {
			return slices.ContainsFunc(s.Messages, func(m packets.Packet) bool { return m.TopicName == topic })
		})
	}
}

// countTopic counts the messages received on topic.
func countTopic(c *client, topic string) int {
	n := 0
	for _, x := range c.topics() {
		if x == topic {
			n++
		}
	}
	return n
}

// A publication on node A reaches subscribers on node B at the QoS of
// their subscription, under 3.1.1 and 5, with its MQTT 5 properties; a
// subscriber on A gets it once (A never receives its own publication back).
func TestClusterCrossNodeDelivery(t *testing.T) {
	nc := natstest.Start(t, 3)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a", "b")
	for _, v := range []byte{4, 5} {
		for _, q := range []byte{0, 1} {
			t.Run(fmt.Sprintf("v%d-qos%d", v, q), func(t *testing.T) {
				pre := fmt.Sprintf("x%d%d/", v, q)
				pub := connect(t, nodes[0].addr, as(v, "alice", "pub"+pre[:3]))
				local := connect(t, nodes[0].addr, as(v, "alice", "local"+pre[:3]))
				sub1 := connect(t, nodes[1].addr, as(v, "alice", "sub1"+pre[:3]))
				sub0 := connect(t, nodes[1].addr, as(v, "alice", "sub0"+pre[:3]))
				sub1.MustSubscribe(t, 1, pre+"#")
				sub0.MustSubscribe(t, 0, pre+"+")
				local.MustSubscribe(t, 1, pre+"#")
				waitRouted(t, pub, sub1, pre+"probe")
				waitRouted(t, pub, sub0, pre+"probe")
				a := pub.publish(pre+"m", "payload", q, false)
				if q == 1 && a.code != 0 {
					t.Fatalf("PUBACK 0x%02x", a.code)
				}
				for _, c := range []struct {
					c   *client
					qos byte
				}{{sub1, q}, {sub0, 0}, {local, q}} {
					if !c.c.waitTopic(pre + "m") {
						t.Fatalf("%s did not receive %sm", c.c.Client.Conn().LocalAddr(), pre)
					}
					m, _ := c.c.message(pre + "m")
					if string(m.Payload) != "payload" || m.FixedHeader.Qos != c.qos {
						t.Fatalf("received %q at QoS %d, want QoS %d", m.Payload, m.FixedHeader.Qos, c.qos)
					}
				}
				pub.publish(pre+"end", "", 0, false)
				if !local.waitTopic(pre+"end") || !sub1.waitTopic(pre+"end") {
					t.Fatal("end marker missing")
				}
				if n := countTopic(local, pre+"m"); n != 1 {
					t.Fatalf("the publisher's node delivered %d copies", n)
				}
				if n := countTopic(sub1, pre+"m"); n != 1 {
					t.Fatalf("the other node delivered %d copies", n)
				}
			})
		}
	}
	t.Run("v5-properties", func(t *testing.T) {
		pub := connect(t, nodes[0].addr, as(5, "alice", "pub-props"))
		sub := connect(t, nodes[1].addr, as(5, "alice", "sub-props"))
		sub.MustSubscribe(t, 1, "p/#")
		waitRouted(t, pub, sub, "p/probe")
		pub.write(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "p/x", PacketID: 7, Payload: []byte("{}"),
			Properties: packets.Properties{
				ContentType: "application/json", ResponseTopic: "p/reply", CorrelationData: []byte{1, 2},
				PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 3600,
				User: []packets.UserProperty{{Key: "k", Val: "v \"quoted\""}, {Key: "k", Val: "v2"}},
			},
		})
		if !sub.waitTopic("p/x") {
			t.Fatal("not delivered")
		}
		m, _ := sub.message("p/x")
		p := m.Properties
		// (mochi writes the response topic and correlation data only to
		// clients that asked for response information.)
		if p.ContentType != "application/json" ||
			!p.PayloadFormatFlag || p.PayloadFormat != 1 || p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > 3600 ||
			len(p.User) != 2 || p.User[0].Val != "v \"quoted\"" || p.User[1].Val != "v2" {
			t.Fatalf("properties = %+v", p)
		}
	})
}

// The receiving node applies its subscribers' own READ ACL: a %u/# user
// subscribed to # on node A never receives another user's topic published
// on node B, while that user does.
func TestClusterACLOnReceivingNode(t *testing.T) {
	nc := natstest.Start(t, 3)
	s := setup{acl: "user admin\ntopic readwrite #\n\npattern readwrite %u/#\n", conf: "strict_subscribe false\n"}
	nodes := startNodes(t, nc, s, "a", "b")
	alice := connect(t, nodes[0].addr, as(5, "alice", "alice"))
	bob := connect(t, nodes[0].addr, as(4, "bob", "bob"))
	alice.mustSubscribe("#")
	bob.mustSubscribe("bob/#")
	admin := connect(t, nodes[1].addr, as(5, "admin", "admin"))
	waitRouted(t, admin, alice, "alice/probe")
	waitRouted(t, admin, bob, "bob/probe")
	for i := range 200 {
		admin.publish("bob/secret", fmt.Sprint(i), byte(i%2), i%3 == 0)
	}
	admin.publish("alice/end", "", 1, false)
	admin.publish("bob/end", "", 1, false)
	if !alice.waitTopic("alice/end") || !bob.waitTopic("bob/end") {
		t.Fatal("end markers missing")
	}
	if n := countTopic(alice, "bob/secret"); n != 0 {
		t.Fatalf("alice received %d of bob's messages from the other node", n)
	}
	if n := countTopic(bob, "bob/secret"); n != 200 {
		t.Fatalf("bob received %d of his 200 messages", n)
	}
	// A new # subscriber on A does not get bob's retained message either.
	late := connect(t, nodes[0].addr, as(5, "alice", "alice2"))
	late.mustSubscribe("#")
	late.ping()
	if got := late.quietFor(waitQuiet); slices.Contains(got, "bob/secret") {
		t.Fatalf("alice received bob's retained message: %q", got)
	}
}

// No-local holds with the cluster on: the publisher's own no-local
// subscription never gets the publication, neither locally nor back
// through the cluster, while subscribers on other nodes do. (The same id
// cannot be live on two nodes: see TestClusterClientIDTakeover.)
func TestClusterNoLocal(t *testing.T) {
	nc := natstest.Start(t, 3)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a", "b")
	me := connect(t, nodes[0].addr, as(5, "alice", "me"))
	me.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "nl/#", Qos: 1, NoLocal: true}}})
	if _, ok := me.WaitPacket(packets.Suback, 1, waitLong); !ok {
		t.Fatal("no SUBACK")
	}
	other := connect(t, nodes[1].addr, as(5, "alice", "other"))
	other.mustSubscribe("nl/#")
	waitRouted(t, me, other, "nl/probe")
	prober := connect(t, nodes[1].addr, as(5, "alice", "prober"))
	waitRouted(t, prober, me, "nl/probe2")
	for q := byte(0); q <= 2; q++ {
		me.publish(fmt.Sprint("nl/mine", q), "x", q, false)
	}
	prober.publish("nl/end", "", 1, false)
	if !me.waitTopic("nl/end") || !other.waitTopic("nl/mine2") {
		t.Fatal("markers missing")
	}
	for _, topic := range me.topics() {
		if strings.HasPrefix(topic, "nl/mine") {
			t.Fatalf("a no-local subscriber received its own publication %s", topic)
		}
	}
}

// Retained set, replace and clear on one node are seen by new subscribers
// on another; a node started later has them before its listener opens.
func TestClusterRetained(t *testing.T) {
	nc := natstest.Start(t, 3)
	s := setup{acl: "user alice\ntopic readwrite #\n"}
	nodes := startNodes(t, nc, s, "a", "b")
	pub := connect(t, nodes[0].addr, as(5, "alice", "pub"))
	for _, st := range []struct{ topic, payload string }{
		{"r/1", "v1"}, {"r/1", "v2"}, {"r/2", "gone"}, {"r/2", ""}, {"r/a.b c", "dots"},
	} {
		if a := pub.publish(st.topic, st.payload, 1, true); a.code != 0 {
			t.Fatalf("retained publish: 0x%02x", a.code)
		}
	}
	want := map[string]string{"r/1": "v2", "r/a.b c": "dots"}
	check := func(addr, id string) {
		t.Helper()
		deadline := time.Now().Add(waitLong)
		for {
			c := connect(t, addr, as(5, "alice", id))
			c.mustSubscribe("r/#")
			c.ping()
			c.quietFor(waitQuiet)
			got := map[string]string{}
			for _, topic := range c.topics() {
				m, _ := c.message(topic)
				got[topic] = string(m.Payload)
			}
			c.disconnect()
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: retained = %v, want %v", id, got, want)
			}
		}
	}
	check(nodes[1].addr, "b-sub")
	// Started after: caught up before its listener opened, so the first
	// subscriber already sees it (no retry needed).
	s.conf = clusterConf(nc, "late")
	late := startBroker(t, s)
	c := connect(t, late.addr, as(5, "alice", "late-sub"))
	c.mustSubscribe("r/#")
	c.ping()
	c.quietFor(waitQuiet)
	if !slices.Equal(sorted(c.topics()), []string{"r/1", "r/a.b c"}) {
		t.Fatalf("late node's retained topics = %q", c.topics())
	}
	if m, _ := c.message("r/1"); string(m.Payload) != "v2" {
		t.Fatalf("late node r/1 = %q", m.Payload)
	}
}

// With NATS gone the node keeps serving its local clients; QoS 1/2
// publications are refused (MQTT 5: 0x83 "cluster backplane
// unavailable"; 3.1.1: disconnected, unacknowledged); /readyz fails and
// /metrics shows it; when NATS is back the node rejoins.
func TestClusterNATSUnavailable(t *testing.T) {
	nc := natstest.Start(t, 1)
	s := setup{acl: "user alice\ntopic readwrite #\n", conf: "admin_listener 127.0.0.1:0\n" + clusterConf(nc, "a")}
	tb := startBroker(t, s)
	sub := connect(t, tb.addr, as(5, "alice", "sub"))
	sub.mustSubscribe("u/#")
	ready := func() (int, string) {
		resp, err := http.Get("http://" + tb.b.AdminAddr() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	metric := func() string {
		resp, err := http.Get("http://" + tb.b.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "moat_cluster_connected ") {
				return l
			}
		}
		return ""
	}
	if code, body := ready(); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	if m := metric(); m != "moat_cluster_connected 1" {
		t.Fatalf("metric = %q", m)
	}
	nc.Shutdown(0)
	deadline := time.Now().Add(waitLong)
	for {
		code, body := ready()
		if code == 503 && strings.Contains(body, "cluster") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with NATS down = %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m := metric(); m != "moat_cluster_connected 0" {
		t.Fatalf("metric with NATS down = %q", m)
	}
	pub5 := connect(t, tb.addr, as(5, "alice", "pub5"))
	for q := byte(1); q <= 2; q++ {
		a := pub5.publish("u/q", "x", q, false)
		if a.code != 0x83 {
			t.Fatalf("MQTT 5 QoS %d publish with NATS down: 0x%02x, want 0x83", q, a.code)
		}
	}
	pub4 := connect(t, tb.addr, as(4, "alice", "pub4"))
	if err := pub4.SendPublish("u/q4", []byte("x"), 1, false, 9); err != nil {
		t.Fatal(err)
	}
	if !pub4.waitClosed() {
		t.Fatal("3.1.1 QoS 1 publish with NATS down: connection kept")
	}
	if _, ok := pub4.WaitPacket(packets.Puback, 9, 0); ok {
		t.Fatal("3.1.1 QoS 1 publish acknowledged with NATS down")
	}
	// Local clients are still served at QoS 0.
	pub5.publish("u/local", "x", 0, false)
	if !sub.waitTopic("u/local") {
		t.Fatal("local QoS 0 delivery stopped with NATS down")
	}
	if slices.Contains(sub.topics(), "u/q") {
		t.Fatal("a refused publication was delivered")
	}
	nc.Restart(0)
	deadline = time.Now().Add(waitLong)
	for {
		if code, _ := ready(); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not ready after NATS came back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if a := pub5.publish("u/back", "x", 1, false); a.code != 0 {
		t.Fatalf("publish after NATS came back: 0x%02x", a.code)
	}
}

// A node that cannot reach NATS at start does not open its listeners: it
// fails with the configuration line, and stops cleanly.
func TestClusterStartWithoutNATS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	dir := t.TempDir()
	conf, _, _ := writeSetup(t, dir, setup{conf: "cluster_nats nats://" + addr + "\ncluster_node_name a\n"})
	cfg, err := config.Load(conf, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Start() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "moat.conf:") || !strings.Contains(err.Error(), "cluster") {
			t.Fatalf("Start = %v, want a cluster error naming the configuration line", err)
		}
	case <-time.After(2 * waitLong):
		t.Fatal("Start did not return")
	}
	if a := b.Addr(listenerID); a != nil {
		t.Fatalf("listener %s opened without the cluster", a)
	}
}

// A client id is unique across the cluster: connecting on node B takes it
// over from node A (MQTT 5 DISCONNECT 0x8E there); another username is
// refused while it is live anywhere, and gets it once it is released.
func TestClusterClientIDTakeover(t *testing.T) {
	nc := natstest.Start(t, 3)
	nodes := startNodes(t, nc, setup{acl: "pattern readwrite %u/#\n"}, "a", "b")
	first := connect(t, nodes[0].addr, as(5, "alice", "dup"))
	first.mustSubscribe("alice/#")
	second := connect(t, nodes[1].addr, as(4, "alice", "dup"))
	if !first.waitClosed() {
		t.Fatal("the connection on node A stayed open after the id connected on node B")
	}
	if d, ok := first.WaitPacket(packets.Disconnect, 0, 0); !ok || d.ReasonCode != packets.ErrSessionTakenOver.Code {
		t.Fatalf("node A's DISCONNECT = %+v (found %v), want 0x8E", d, ok)
	}
	// The session on A is gone: nothing of alice/# is routed to A any more.
	other := connect(t, nodes[1].addr, as(5, "alice", "other"))
	other.publish("alice/x", "x", 1, false)
	second.ping()
	for _, v := range []byte{4, 5} {
		c, ack := dial(t, nodes[0].addr, as(v, "bob", fmt.Sprint("dup")))
		want := byte(0x85)
		if v == 4 {
			want = 2
		}
		if ack.ReasonCode != want {
			t.Fatalf("v%d bob with alice's live id on another node: CONNACK 0x%02x, want 0x%02x", v, ack.ReasonCode, want)
		}
		c.waitClosed()
	}
	if second.err() != nil {
		t.Fatalf("alice's connection on B ended: %v", second.err())
	}
	second.disconnect()
	deadline := time.Now().Add(waitLong)
	for {
		c, ack := dial(t, nodes[0].addr, as(5, "bob", "dup"))
		if ack.ReasonCode == 0 {
			break
		}
		c.waitClosed()
		if time.Now().After(deadline) {
			t.Fatalf("bob still refused after alice left: 0x%02x", ack.ReasonCode)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// One NATS node stops during a QoS 1 storm across Moat nodes: every
// acknowledged message reaches the subscriber on the other node
// (duplicates are allowed at QoS 1 and counted). Node B's backplane is
// given only the stopped node's URL, so its connection is the one that
// fails over.
func TestClusterNATSNodeLossDuringQoS1Storm(t *testing.T) {
	nc := natstest.Start(t, 3)
	s := setup{acl: "user alice\ntopic readwrite #\n"}
	conf := "cluster_name t\ncluster_replicas 3\n"
	s.conf = conf + "cluster_nats " + nc.URL(1) + "\ncluster_node_name a\n"
	a := startBroker(t, s)
	s.conf = conf + "cluster_nats " + nc.URL(0) + "\ncluster_node_name b\n"
	b := startBroker(t, s)
	sub := connect(t, b.addr, as(5, "alice", "sub"))
	sub.mustSubscribe("storm/#")
	pub := connect(t, a.addr, as(5, "alice", "pub"))
	waitRouted(t, pub, sub, "storm/probe")

	const total = 3000
	var mu sync.Mutex
	acked, refused := map[string]bool{}, 0
	i := 0
	stopped := make(chan struct{})
	err := pub.PublishWindow(20, nil, func() (mqtttest.Msg, bool) {
		i++
		if i == total/3 {
			go func() { nc.Shutdown(0); close(stopped) }()
		}
		return mqtttest.Msg{Topic: "storm/m", Payload: []byte(fmt.Sprint(i))}, i <= total
	}, func(m mqtttest.Msg, code byte) {
		mu.Lock()
		defer mu.Unlock()
		if code == 0 {
			acked[string(m.Payload)] = true
		} else {
			refused++
		}
	})
	if err != nil {
		t.Fatalf("storm: %v", err)
	}
	<-stopped
	// A marker after the storm, once B's backplane is back.
	marker := connect(t, a.addr, as(5, "alice", "marker"))
	waitRouted(t, marker, sub, "storm/end")
	got := map[string]int{}
	// The replay waits for the stream to elect a new leader.
	deadline := time.Now().Add(6 * waitLong)
	for {
		got = map[string]int{}
		sub.WaitUntil(time.Millisecond, func(st mqtttest.State) bool {
			for _, m := range st.Messages {
				if m.TopicName == "storm/m" {
					got[string(m.Payload)]++
				}
			}
			return true
		})
		lost := 0
		mu.Lock()
		for p := range acked {
			if got[p] == 0 {
				lost++
			}
		}
		mu.Unlock()
		if lost == 0 || time.Now().After(deadline) {
			dups := 0
			for _, n := range got {
				dups += n - 1
			}
			t.Logf("NATS node stopped during %d QoS 1 publishes: %d acknowledged, %d refused (resendable), %d acknowledged lost, %d duplicates",
				total, len(acked), refused, lost, dups)
			if lost > 0 {
				t.Fatalf("%d acknowledged messages lost", lost)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A node stopped while it holds persistent sessions catches up when it
// starts again: its sessions receive every QoS 1 message acknowledged on
// another node meanwhile.
func TestClusterNodeRestartCatchUp(t *testing.T) {
	nc := natstest.Start(t, 3)
	s := setup{acl: "user alice\ntopic readwrite #\n"}
	nodes := startNodes(t, nc, s, "a")
	s.conf = persistConf
	b := startNodes(t, nc, s, "b")[0]
	o := persistent(as(4, "alice", "keeper"))
	keeper := connect(t, b.addr, o)
	keeper.mustSubscribe("cu/#")
	pub := connect(t, nodes[0].addr, as(5, "alice", "pub"))
	waitRouted(t, pub, keeper, "cu/probe")
	keeper.disconnect()
	b.waitOffline("keeper")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := b.b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if a := pub.publish("cu/m", fmt.Sprint(i), 1, false); a.code != 0 {
			t.Fatalf("publish %d: 0x%02x", i, a.code)
		}
	}
	b = startConf(t, b.dir, b.conf, listenerID)
	keeper = resume(t, b.addr, o)
	deadline := time.Now().Add(waitLong)
	for countTopic(keeper, "cu/m") < n && time.Now().Before(deadline) {
		keeper.WaitUntil(100*time.Millisecond, func(mqtttest.State) bool { return false })
	}
	got := map[string]bool{}
	keeper.WaitUntil(time.Millisecond, func(st mqtttest.State) bool {
		for _, m := range st.Messages {
			if m.TopicName == "cu/m" {
				got[string(m.Payload)] = true
			}
		}
		return true
	})
	if len(got) != n {
		t.Fatalf("the restarted node's session received %d of the %d messages acknowledged while it was down", len(got), n)
	}
}

// A Will published when its client's connection drops on node A reaches
// subscribers on node B, retained ones included.
func TestClusterWill(t *testing.T) {
	nc := natstest.Start(t, 3)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a", "b")
	sub := connect(t, nodes[1].addr, as(5, "alice", "sub"))
	sub.mustSubscribe("will/#")
	prober := connect(t, nodes[0].addr, as(5, "alice", "prober"))
	waitRouted(t, prober, sub, "will/probe")
	for i, v := range []byte{4, 5} {
		o := as(v, "alice", fmt.Sprint("dying", v))
		o.will = &packets.Packet{TopicName: fmt.Sprint("will/", v), Payload: []byte("gone"),
			FixedHeader: packets.FixedHeader{Qos: 1, Retain: i == 1}}
		c := connect(t, nodes[0].addr, o)
		c.drop()
		if !sub.waitTopic(fmt.Sprint("will/", v)) {
			t.Fatalf("v%d Will from node A not received on node B", v)
		}
	}
	late := connect(t, nodes[1].addr, as(5, "alice", "late"))
	late.mustSubscribe("will/5")
	if !late.waitTopic("will/5") {
		t.Fatal("retained Will not seen by a new subscriber on the other node")
	}
}

// A topic too long to become a NATS subject stays on its node: QoS 0 is
// delivered there, QoS 1/2 is refused (MQTT 5: 0x83 "topic too long for
// the cluster") rather than acknowledged for subscribers it cannot reach;
// other clients are still served.
func TestClusterLongTopic(t *testing.T) {
	nc := natstest.Start(t, 1)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a")
	// Under max_topic_length (4096 bytes), over 2 KiB once encoded.
	long := "l/" + strings.Repeat("é\"ip=", 400)
	sub := connect(t, nodes[0].addr, as(5, "alice", "sub"))
	sub.mustSubscribe("l/#")
	pub := connect(t, nodes[0].addr, as(5, "alice", "pub"))
	for q := byte(1); q <= 2; q++ {
		if a := pub.publish(long, "x", q, false); a.code != 0x83 {
			t.Fatalf("QoS %d publish of a %d-byte topic: 0x%02x, want 0x83", q, len(long), a.code)
		}
	}
	pub.publish(long, "x", 0, false)
	if !sub.waitTopic(long) {
		t.Fatal("QoS 0 on a long topic not delivered on its node")
	}
	if a := pub.publish("l/short", "x", 1, false); a.code != 0 || !sub.waitTopic("l/short") {
		t.Fatalf("a short topic after the long ones: 0x%02x", a.code)
	}
}

// A retained message's MQTT 5 expiry holds on every node: another node
// delivers it to a new subscriber before it expires and not after.
func TestClusterRetainedExpiry(t *testing.T) {
	nc := natstest.Start(t, 1)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a", "b")
	pub := connect(t, nodes[0].addr, as(5, "alice", "pub"))
	pub.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, TopicName: "exp/x", PacketID: 3,
		Payload: []byte("short-lived"), Properties: packets.Properties{MessageExpiryInterval: 2},
	})
	if _, ok := pub.WaitPacket(packets.Puback, 3, waitLong); !ok {
		t.Fatal("no PUBACK")
	}
	seen := func(i int) bool {
		c := connect(t, nodes[1].addr, as(5, "alice", fmt.Sprint("s", i)))
		c.mustSubscribe("exp/#")
		c.ping()
		c.quietFor(50 * time.Millisecond)
		defer c.disconnect()
		m, ok := c.message("exp/x")
		if ok && (m.Properties.MessageExpiryInterval == 0 || m.Properties.MessageExpiryInterval > 2) {
			t.Fatalf("expiry interval on the other node = %d", m.Properties.MessageExpiryInterval)
		}
		return ok
	}
	deadline := time.Now().Add(waitLong)
	i := 0
	for !seen(i) {
		if i++; time.Now().After(deadline) {
			t.Fatal("retained message never reached the other node")
		}
	}
	for seen(i) {
		if i++; time.Now().After(deadline) {
			t.Fatal("retained message still delivered by the other node after its expiry")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A shared subscription with members on two nodes gets each message once
// across the cluster, while an ordinary subscriber gets every message.
func TestClusterSharedSubscription(t *testing.T) {
	nc := natstest.Start(t, 3)
	nodes := startNodes(t, nc, setup{acl: "user alice\ntopic readwrite #\n"}, "a", "b")
	var members []*client
	for i, nd := range []*testBroker{nodes[0], nodes[0], nodes[1], nodes[1]} {
		c := connect(t, nd.addr, as(5, "alice", fmt.Sprint("member", i)))
		c.mustSubscribe("$share/g/sh/#")
		members = append(members, c)
	}
	other := connect(t, nodes[1].addr, as(5, "alice", "other-group"))
	other.mustSubscribe("$share/h/sh/#")
	plain := connect(t, nodes[1].addr, as(4, "alice", "plain"))
	plain.mustSubscribe("sh/#")
	pub := connect(t, nodes[0].addr, as(5, "alice", "pub"))
	waitRouted(t, pub, plain, "sh/probe")
	// Until every node's queue subscriptions are known everywhere.
	deadline := time.Now().Add(waitLong)
	for {
		pub.publish("sh/probe2", "", 0, false)
		n := 0
		for _, c := range members {
			n += countTopic(c, "sh/probe2")
		}
		if countTopic(other, "sh/probe2") > 0 && n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("shared subscriptions not routed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	const n = 200
	for i := range n {
		pub.publish("sh/m", fmt.Sprint(i), byte(i%2), false)
	}
	pub.publish("sh/end", "", 1, false)
	if !plain.waitTopic("sh/end") {
		t.Fatal("end marker missing")
	}
	count := func() (total, nodesUsed int, perGroup int) {
		used := map[int]bool{}
		for i, c := range members {
			k := countTopic(c, "sh/m")
			total += k
			if k > 0 {
				used[i/2] = true
			}
		}
		return total, len(used), countTopic(other, "sh/m")
	}
	deadline = time.Now().Add(waitLong)
	for {
		total, used, h := count()
		if total == n && h == n {
			if used < 2 {
				t.Logf("all %d messages went to one node's members", n)
			}
			break
		}
		if total > n || h > n || time.Now().After(deadline) {
			t.Fatalf("group g received %d, group h %d, want %d each", total, h, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if k := countTopic(plain, "sh/m"); k != n {
		t.Fatalf("the ordinary subscriber received %d, want %d", k, n)
	}
	if got := plain.quietFor(waitQuiet); slices.Contains(got, "sh/m") {
		t.Fatal("extra copies reached the ordinary subscriber")
	}
	total, _, _ := count()
	if total != n {
		t.Fatalf("group g ended with %d deliveries, want %d", total, n)
	}
}
