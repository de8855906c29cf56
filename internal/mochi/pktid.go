package mochi

import (
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi keeps a client's own packet identifiers (SUBSCRIBE, inbound QoS 2)
// and the identifiers of its deliveries to that client in one map, and
// numbers its deliveries from 1 as clients number their packets. A client
// SUBSCRIBE reusing the identifier of a delivery still in flight is then
// answered 0x91, and an inbound QoS 1/2 publish can erase the record of an
// outbound one. Moat starts each session's delivery identifiers in the
// upper half of the range, where clients counting from 1 do not reach.
const DeliveryIDBase = 32767

// PacketIDs is the hook; add it before clients connect.
type PacketIDs struct{ mqtt.HookBase }

var _ mqtt.Hook = (*PacketIDs)(nil)

func (*PacketIDs) ID() string { return "moat-packet-ids" }

func (*PacketIDs) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }

// OnSessionEstablish runs before the session's first delivery.
func (*PacketIDs) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if p, err := deliveryCounter(cl); err == nil && atomic.LoadUint32(p) < DeliveryIDBase {
		atomic.StoreUint32(p, DeliveryIDBase)
	}
}
