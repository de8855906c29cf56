package metrics

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

var _ mqtt.Hook = (*Hook)(nil)

// Hook is the mochi hook that feeds the per-listener connection, message and
// byte metrics and the retained-message gauge. It only reads; it never
// changes a packet or refuses anything.
type Hook struct {
	mqtt.HookBase
	m        *Metrics
	retained func() int
}

// NewHook returns a hook feeding m. retained is asked for the
// retained-message count on every $SYS tick: pass RetainedCount(server) or
// the store's own count. nil falls back to mochi's Info.Retained, which also
// counts mochi's own $SYS topics and is refreshed only when a client retains.
func NewHook(m *Metrics, retained func() int) *Hook {
	return &Hook{m: m, retained: retained}
}

// RetainedCount counts the retained messages of clients in srv's topic tree,
// leaving out the $SYS topics mochi retains for itself. It walks only the
// $SYS subtree, so it is cheap enough for a once-a-second tick.
func RetainedCount(srv *mqtt.Server) func() int {
	return func() int {
		return srv.Topics.Retained.Len() - len(srv.Topics.Messages("$SYS/#"))
	}
}

// ID names the hook in mochi's logs.
func (h *Hook) ID() string { return "moat-metrics" }

// Provides lists the events the hook counts.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPacketRead,
		mqtt.OnPacketSent, mqtt.OnSysInfoTick, mqtt.OnPublishDropped:
		return true
	}
	return false
}

// OnSessionEstablished counts a connection. Not OnConnect: mochi calls it
// before authentication and a refused CONNECT never reaches OnDisconnect,
// so the gauge would only grow.
func (h *Hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if h.m == nil {
		return
	}
	h.m.listener(cl.Net.Listener).connections.Inc()
}

// OnDisconnect uncounts a connection. mochi also calls it for each session
// restored from the store at start (no network connection, never counted).
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if h.m == nil || cl.Net.Conn == nil || cl.Net.Inline {
		return
	}
	h.m.listener(cl.Net.Listener).connections.Dec()
}

// OnPacketRead counts an inbound packet and its wire size.
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.m == nil {
		return pk, nil
	}
	lm := h.m.listener(cl.Net.Listener)
	lm.bytesReceived.Add(float64(wireSize(pk.FixedHeader.Remaining)))
	if pk.FixedHeader.Type == packets.Publish {
		lm.messagesReceived.Inc()
	}
	return pk, nil
}

// OnPacketSent counts an outbound packet. The size comes from the fixed
// header, not from b: mochi passes a buffer already drained by WriteTo when
// it writes straight to the connection, so len(b) is often 0.
func (h *Hook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if h.m == nil {
		return
	}
	lm := h.m.listener(cl.Net.Listener)
	lm.bytesSent.Add(float64(wireSize(pk.FixedHeader.Remaining)))
	if pk.FixedHeader.Type == packets.Publish {
		lm.messagesSent.Inc()
	}
}

// OnPublishDropped counts a message mochi dropped because the subscriber's
// outbound queue was full.
func (h *Hook) OnPublishDropped(cl *mqtt.Client, _ packets.Packet) {
	if h.m == nil {
		return
	}
	h.m.listener(cl.Net.Listener).messagesDropped.Inc()
}

// OnSysInfoTick refreshes the retained-message gauge.
func (h *Hook) OnSysInfoTick(info *system.Info) {
	if h.m == nil {
		return
	}
	if h.retained != nil {
		h.m.SetRetained(h.retained())
		return
	}
	h.m.SetRetained(int(atomic.LoadInt64(&info.Retained)))
}

// wireSize is the size of a whole MQTT packet with the given remaining
// length: one type byte, the variable-length remaining length, the rest.
func wireSize(remaining int) int {
	n := 1 + 1
	for r := remaining; r > 127; r >>= 7 {
		n++
	}
	return n + remaining
}
