package auth

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DeliveryGuard returns a hook that checks every PUBLISH as it is written
// to a client against the policy in force at that moment. mochi asks the
// ACL when it queues a delivery, not when it writes it: a message waiting
// in a client's outbound queue, or in flight and waiting for quota, across
// a reload would otherwise still go out. Add it with srv.AddHook.
func (h *Hook) DeliveryGuard() mqtt.Hook { return &deliveryGuard{h: h} }

type deliveryGuard struct {
	mqtt.HookBase
	h *Hook
}

func (g *deliveryGuard) ID() string { return "moat-delivery" }

func (g *deliveryGuard) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode cannot drop a packet, but a packet larger than its
// Mods.MaxSize is refused by mochi's writer: a denied delivery gets a
// MaxSize of 1 and is never written; its in-flight record goes too.
// Swap and OnSessionEstablish remove such deliveries beforehand, so this
// only bites in a race with a reload; in flight and waiting for receive
// quota, the dropped message keeps one unit of that quota until the
// client reconnects (mochi takes it after the write).
func (g *deliveryGuard) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline {
		return pk
	}
	if pk.TopicName == "" && pk.Properties.TopicAliasFlag {
		// An outbound alias of a topic checked when it was queued.
		return pk
	}
	h := g.h
	id := h.identity(cl)
	if id != nil && !id.revoked.Load() && h.policy.Load().scope(id.listener).canRead(&id.client, pk.TopicName) {
		return pk
	}
	h.events.ACLDenied("read")
	if pk.FixedHeader.Qos > 0 {
		h.dropInflight(cl, pk)
	}
	pk.Mods.MaxSize = 1
	return pk
}
