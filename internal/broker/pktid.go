package broker

import (
	"errors"
	"reflect"
	"sync/atomic"
	"unsafe"

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
const deliveryIDBase = 32767

type packetIDs struct{ mqtt.HookBase }

var _ mqtt.Hook = (*packetIDs)(nil)

func (*packetIDs) ID() string { return "moat-packet-ids" }

func (*packetIDs) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }

// OnSessionEstablish runs before the session's first delivery.
func (*packetIDs) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if p, err := deliveryCounter(cl); err == nil && atomic.LoadUint32(p) < deliveryIDBase {
		atomic.StoreUint32(p, deliveryIDBase)
	}
}

// deliveryCounter is mochi v2.7.9's unexported per-client counter; a test
// fails if the pinned version's layout changes.
func deliveryCounter(cl *mqtt.Client) (*uint32, error) {
	f := reflect.ValueOf(&cl.State).Elem().FieldByName("packetID")
	if !f.IsValid() || f.Kind() != reflect.Uint32 {
		return nil, errors.New("mochi client state has no packetID counter")
	}
	return (*uint32)(unsafe.Pointer(f.UnsafeAddr())), nil
}
