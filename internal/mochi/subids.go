package mochi

import (
	"slices"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/acl"
)

// SubscriptionIDs adds the subscription identifiers mochi leaves out of retained
// messages sent on SUBSCRIBE: it builds them only when merging subscribers
// for live messages. MQTT 5 clients such as Home Assistant route messages
// by these identifiers.
type SubscriptionIDs struct{ mqtt.HookBase }

var _ mqtt.Hook = (*SubscriptionIDs)(nil)

func (*SubscriptionIDs) ID() string { return "moat-subscription-ids" }

func (*SubscriptionIDs) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode fills in the identifiers of the client's subscriptions
// matching a retained PUBLISH that carries none. Live messages already
// carry theirs, so only retained deliveries pay for the lookup.
func (*SubscriptionIDs) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Publish || !pk.FixedHeader.Retain ||
		cl.Properties.ProtocolVersion != 5 || len(pk.Properties.SubscriptionIdentifier) > 0 {
		return pk
	}
	var ids []int
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if sub.Identifier > 0 && !mqtt.IsSharedFilter(sub.Filter) && acl.FilterMatches(sub.Filter, pk.TopicName) {
			ids = append(ids, sub.Identifier)
		}
	}
	if len(ids) > 0 {
		slices.Sort(ids)
		pk.Properties.SubscriptionIdentifier = ids
	}
	return pk
}
