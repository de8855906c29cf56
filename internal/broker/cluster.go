package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/moat-mqtt/moat/internal/cluster"
)

// clusterListener names the injecting client's listener, so hooks can tell
// a message from another node from a local one.
const clusterListener = "cluster"

// errClusterUnavailable answers an MQTT 5 QoS 1/2 publish the cluster
// could not take: the client hears why instead of being acknowledged.
var errClusterUnavailable = packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "cluster backplane unavailable"}

// errClusterTopicTooLong answers a QoS 1/2 publish whose topic cannot
// become a NATS subject.
var errClusterTopicTooLong = packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "topic too long for the cluster"}

// clusterNode wires the NATS backplane into mochi: its hook hands local
// publications and subscriptions to the backplane, and messages from
// other nodes go through mochi's own publish path (per-subscriber READ
// ACL, QoS downgrade, retain-as-published, no-local by origin client id,
// subscription identifiers) from an inline client.
type clusterNode struct {
	mqtt.HookBase
	b   *Broker
	log *slog.Logger
	bp  atomic.Pointer[cluster.Backplane]

	node string
	// claimed holds the connections whose client id this node claimed in
	// the cluster; only those are taken over.
	claimed sync.Map // *mqtt.Client -> struct{}

	mu  sync.Mutex   // serialises injections: inj's id is the origin's
	inj *mqtt.Client // inline, never registered in mochi's clients
}

func (b *Broker) newCluster() error {
	if !b.cfg.Cluster.Enabled() {
		return nil
	}
	c := &clusterNode{b: b, log: b.log.With("component", "cluster")}
	c.inj = b.srv.NewClient(nil, clusterListener, "", true)
	c.inj.Properties.ProtocolVersion = 5
	if err := b.srv.AddHook(c, nil); err != nil {
		return fmt.Errorf("cluster hook: %w", err)
	}
	b.cluster = c
	stat := func(f func(cluster.Stats) float64) func() float64 {
		return func() float64 {
			if bp := c.bp.Load(); bp != nil {
				return f(bp.Stats())
			}
			return 0
		}
	}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moat_cluster_connected", Help: "1 while the NATS backplane is connected."},
			stat(func(s cluster.Stats) float64 { return b2f(s.Connected) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moat_cluster_published_total", Help: "Publications sent to the other nodes."},
			stat(func(s cluster.Stats) float64 { return float64(s.Published) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moat_cluster_received_total", Help: "Publications received from other nodes."},
			stat(func(s cluster.Stats) float64 { return float64(s.Received) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moat_cluster_refused_total", Help: "Publications the backplane could not take."},
			stat(func(s cluster.Stats) float64 { return float64(s.Refused) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "moat_cluster_receive_overflows_total", Help: "Times messages from other nodes were dropped because the receive buffer was full."},
			stat(func(s cluster.Stats) float64 { return float64(s.Dropped) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "moat_cluster_subjects", Help: "NATS subjects this node subscribes to for its local subscriptions."},
			stat(func(s cluster.Stats) float64 { return float64(s.Subjects) })),
	}
	for _, col := range cs {
		if err := b.reg.Register(col); err != nil {
			return fmt.Errorf("cluster metrics: %w", err)
		}
	}
	return nil
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

// startCluster connects to NATS and mirrors the cluster's retained
// messages before any listener opens, then declares the interest of the
// sessions restored from the store.
func (b *Broker) startCluster() error {
	c := b.cluster
	if c == nil {
		return nil
	}
	k := b.cfg.Cluster
	node := k.NodeName
	if node == "" {
		h, err := os.Hostname()
		if err != nil || !validNodeName(h) {
			return fmt.Errorf("cluster (%s): the host name cannot name this node; set cluster_node_name", k.Pos)
		}
		node = h
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	bp, err := cluster.Start(ctx, cluster.Options{
		URLs: k.NATS, CredsFile: k.Credentials, CAFile: k.CAFile, CertFile: k.CertFile, KeyFile: k.KeyFile,
		Name: k.Name, Node: node, Replicas: k.Replicas,
		Deliver:  c.deliver,
		Retained: c.retained,
		TakeOver: c.takeOver,
		Logger:   c.log,
	})
	if err != nil {
		return fmt.Errorf("cluster (%s): %w", k.Pos, err)
	}
	c.node = node
	c.bp.Store(bp)
	for _, cl := range b.srv.Clients.GetAll() {
		for filter := range cl.State.Subscriptions.GetAll() {
			if err := bp.Subscribe(cl.ID, filter); err != nil {
				c.log.Error("cluster: restored subscription not routed", "client", cl.ID, "error", err)
			}
		}
	}
	// Before the listeners open: the restored sessions get what was
	// published while this node was down.
	n, err := bp.CatchUp()
	if err != nil {
		c.log.Warn("cluster: catch-up incomplete", "replayed", n, "error", err)
	}
	c.log.Info("joined the cluster", "cluster", k.Name, "node", node, "caught_up", n)
	return nil
}

func validNodeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == ""
}

func (b *Broker) closeCluster() {
	if b.cluster == nil {
		return
	}
	if bp := b.cluster.bp.Swap(nil); bp != nil {
		bp.Close()
	}
}

// clusterCheck is the /readyz check of the backplane.
func (b *Broker) clusterCheck(ctx context.Context) error {
	bp := b.cluster.bp.Load()
	if bp == nil {
		return cluster.ErrUnavailable
	}
	return bp.Check(ctx)
}

var _ mqtt.Hook = (*clusterNode)(nil)

func (c *clusterNode) ID() string { return "moat-cluster" }

func (c *clusterNode) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnConnect, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnWillSent, mqtt.OnSelectSubscribers:
		return true
	}
	return false
}

// OnConnect runs after the auth hook accepted the CONNECT. The rule of one
// node holds across the cluster: a client id live on another node under
// another username refuses the newcomer (3.1.1 code 2, MQTT 5 0x85). With
// NATS unreachable the node decides alone.
func (c *clusterNode) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	bp := c.bp.Load()
	if bp == nil {
		return nil
	}
	o, ok, err := bp.Owner(c.b.ctx, cl.ID)
	if err != nil || !ok || o.Node == c.node || o.User == string(cl.Properties.Username) {
		return nil
	}
	code := packets.Code{Code: packets.ErrClientIdentifierNotValid.Code, Reason: "client identifier in use"}
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Code{Code: 2}
	}
	_ = c.b.srv.SendConnack(cl, code, false, nil)
	c.log.Info("CONNECT refused: client id live on another node under another username", "client", cl.ID, "node", o.Node)
	return errClientIDInUse
}

var errClientIDInUse = errors.New("client id in use on another node")

// OnSessionEstablished claims the client id in the cluster: the node that
// served it disconnects its connection.
func (c *clusterNode) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	bp := c.bp.Load()
	if bp == nil || cl.Net.Inline {
		return
	}
	if err := bp.Claim(c.b.ctx, cl.ID, string(cl.Properties.Username)); err != nil {
		c.log.Warn("cluster: client id not claimed", "client", cl.ID, "error", err)
		return
	}
	c.claimed.Store(cl, struct{}{})
}

// OnDisconnect gives the client id back, unless a newer connection (here
// or on another node) holds it.
func (c *clusterNode) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	c.claimed.Delete(cl)
	bp := c.bp.Load()
	if bp == nil || cl.Net.Inline || cl.IsTakenOver() {
		return
	}
	if cur, ok := c.b.srv.Clients.Get(cl.ID); ok && cur != cl {
		return
	}
	bp.Release(c.b.ctx, cl.ID)
}

// takeOver ends this node's connection and session for a client id that
// connected on another node (MQTT 5: DISCONNECT 0x8E). The session does
// not move with it: the new node starts from its own.
func (c *clusterNode) takeOver(id, node string) {
	cl, ok := c.b.srv.Clients.Get(id)
	if !ok {
		return
	}
	if _, mine := c.claimed.Load(cl); !mine && !cl.Closed() {
		// Connected here after that claim and not yet claimed itself:
		// it is the newer one; its own claim takes the id over there.
		return
	}
	c.log.Info("client id taken over on another node", "client", id, "node", node)
	if !cl.Closed() {
		_ = c.b.srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	}
	c.b.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
	if cur, ok := c.b.srv.Clients.Get(id); ok && cur == cl {
		c.b.srv.Clients.Delete(id)
	}
}

func (c *clusterNode) fromCluster(cl *mqtt.Client) bool {
	return cl.Net.Inline && cl.Net.Listener == clusterListener
}

// OnPublish runs after the auth hook accepted the publication (its write
// ACL check and limits). QoS 1/2 returns once the cluster's stream holds
// it, so mochi acknowledges only what the cluster has; when it cannot,
// the publication is refused: MQTT 5 hears 0x83 "cluster backplane
// unavailable", 3.1.1 (which has no refusal) is disconnected unacknowledged
// and resends on reconnecting. QoS 0 is delivered locally either way.
func (c *clusterNode) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if c.fromCluster(cl) {
		return pk, nil
	}
	bp := c.bp.Load()
	if bp == nil {
		return pk, nil
	}
	m := messageOf(cl, pk)
	err := bp.Publish(c.b.ctx, m)
	if err == nil {
		return pk, nil
	}
	if pk.FixedHeader.Qos == 0 {
		c.log.Warn("cluster: QoS 0 publication delivered on this node only", "client", cl.ID, "error", err)
		return pk, nil
	}
	c.log.Warn("cluster: QoS 1/2 publication refused", "client", cl.ID, "error", err)
	code := errClusterUnavailable
	if errors.Is(err, cluster.ErrTopicTooLong) {
		code = errClusterTopicTooLong
	}
	if cl.Properties.ProtocolVersion == 5 {
		if pk.FixedHeader.Qos == 2 {
			// mochi answers an OnPublish error with a PUBACK even at QoS 2.
			_ = cl.WritePacket(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
				PacketID:    pk.PacketID,
				ReasonCode:  code.Code,
				Properties:  packets.Properties{ReasonString: code.Reason},
			})
			return pk, packets.ErrRejectPacket
		}
		return pk, code
	}
	cl.Stop(fmt.Errorf("publish refused: %w", err))
	return pk, packets.ErrRejectPacket
}

// OnWillSent sends a Will to the other nodes too: mochi publishes Wills
// without OnPublish (the auth hook checked the Will's topic at CONNECT and
// again before it is sent).
func (c *clusterNode) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	bp := c.bp.Load()
	if bp == nil || c.fromCluster(cl) || pk.TopicName == "" {
		return // "": a Will the auth hook emptied
	}
	if err := bp.Publish(c.b.ctx, messageOf(cl, pk)); err != nil {
		c.log.Warn("cluster: Will delivered on this node only", "client", cl.ID, "error", err)
	}
}

func messageOf(cl *mqtt.Client, pk packets.Packet) *cluster.Message {
	m := &cluster.Message{
		Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain,
		Origin: cl.ID, Created: pk.Created,
		Props: cluster.Props{
			PayloadFormat: pk.Properties.PayloadFormat, PayloadFormatSet: pk.Properties.PayloadFormatFlag,
			MessageExpiry: pk.Properties.MessageExpiryInterval, ContentType: pk.Properties.ContentType,
			ResponseTopic: pk.Properties.ResponseTopic, CorrelationData: pk.Properties.CorrelationData,
		},
	}
	for _, u := range pk.Properties.User {
		m.Props.User = append(m.Props.User, cluster.UserProperty{Key: u.Key, Value: u.Val})
	}
	return m
}

// OnSubscribed routes the granted filters' subjects to this node.
func (c *clusterNode) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	bp := c.bp.Load()
	if bp == nil || cl.Net.Inline {
		return
	}
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 {
			if err := bp.Subscribe(cl.ID, f.Filter); err != nil {
				c.log.Error("cluster: subscription not routed", "client", cl.ID, "error", err)
			}
		}
	}
}

// OnUnsubscribed drops the interest (also called when a session ends).
func (c *clusterNode) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	bp := c.bp.Load()
	if bp == nil || cl.Net.Inline {
		return
	}
	for _, f := range pk.Filters {
		bp.Unsubscribe(cl.ID, f.Filter)
	}
}

// packet rebuilds the PUBLISH of a message from another node.
func clusterPacket(m *cluster.Message) (packets.Packet, bool) {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: m.QoS, Retain: m.Retain},
		TopicName:       m.Topic,
		Payload:         m.Payload,
		ProtocolVersion: 5,
		Created:         m.Created,
		Properties: packets.Properties{
			PayloadFormat: m.Props.PayloadFormat, PayloadFormatFlag: m.Props.PayloadFormatSet,
			ContentType: m.Props.ContentType, ResponseTopic: m.Props.ResponseTopic, CorrelationData: m.Props.CorrelationData,
		},
	}
	if m.QoS > 0 {
		pk.PacketID = 1 // mochi's validity check wants one; inline publishes are never acknowledged
	}
	for _, u := range m.Props.User {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	if e := m.Props.MessageExpiry; e > 0 {
		// What is left of the interval the publisher gave.
		left := m.Created + int64(e) - time.Now().Unix()
		if left <= 0 {
			return pk, false
		}
		pk.Properties.MessageExpiryInterval = uint32(min(left, int64(e)))
		pk.Expiry = m.Created + int64(e)
	}
	return pk, true
}

// deliver publishes a message from another node on this one.
func (c *clusterNode) deliver(m *cluster.Message) {
	pk, ok := clusterPacket(m)
	if !ok {
		return // expired on the way
	}
	if m.Shared != "" && len(c.b.srv.Topics.Subscribers(m.Topic).Shared[m.Shared]) == 0 {
		// The member left: without one, mochi would not ask
		// OnSelectSubscribers and would deliver to everyone else again.
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// mochi stamps the injecting client's id as the origin: the no-local
	// check compares it with each subscriber's id.
	c.inj.ID = m.Origin
	// A PUBLISH never uses its CONNECT fields: they carry, to
	// OnSelectSubscribers, that the message came from the cluster and for
	// which shared subscription.
	pk.Connect.ClientIdentifier = clusterMark + m.Shared
	if err := c.b.srv.InjectPacket(c.inj, pk); err != nil {
		c.log.Warn("cluster: message from another node not delivered", "error", err)
	}
}

// clusterMark starts the CONNECT client id field of a PUBLISH injected
// from the cluster (see deliver); it cannot be a real client id.
const clusterMark = "\x00cluster\x00"

// OnSelectSubscribers makes shared subscriptions cluster-wide: NATS queue
// groups choose the node of one member for each message, so a message
// reaches a node's shared members only when it arrives for their shared
// subscription, and then reaches nothing else; local publications and
// ordinary messages from other nodes leave shared members out.
func (c *clusterNode) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	if c.bp.Load() == nil {
		return subs
	}
	shared, fromCluster := strings.CutPrefix(pk.Connect.ClientIdentifier, clusterMark)
	if !fromCluster || shared == "" {
		subs.Shared = map[string]map[string]packets.Subscription{}
		subs.SharedSelected = map[string]packets.Subscription{}
		return subs
	}
	members := subs.Shared[shared]
	subs.Shared = map[string]map[string]packets.Subscription{}
	if len(members) > 0 {
		subs.Shared[shared] = members
	}
	subs.SharedSelected = map[string]packets.Subscription{}
	subs.Subscriptions = map[string]packets.Subscription{}
	subs.InlineSubscriptions = map[int]mqtt.InlineSubscription{}
	return subs
}

// retained mirrors a change of the cluster's retained set into this
// node's (the bucket is the authority; its order is the cluster's).
func (c *clusterNode) retained(m *cluster.Message) {
	srv := c.b.srv
	if len(m.Payload) == 0 {
		srv.Topics.Retained.Delete(m.Topic)
	} else {
		pk, ok := clusterPacket(m)
		if !ok {
			return
		}
		pk.FixedHeader.Retain = true
		pk.Origin = m.Origin
		if pk.Created == 0 {
			pk.Created = time.Now().Unix()
		}
		srv.Topics.RetainMessage(pk)
		if pk.Expiry > 0 {
			c.b.expiry.track(pk.TopicName, pk.Expiry)
		}
	}
	atomic.StoreInt64(&srv.Info.Retained, int64(srv.Topics.Retained.Len()))
}
