package mochi

import (
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Moat reaches into two unexported fields of mochi v2.7.9. One policy for
// both: Verify checks the layout when the broker is built, and a mismatch
// (another mochi version) stops Moat with an error instead of silently
// running without the fix.

// Verify checks that srv has the layout the reach-ins expect.
func Verify(srv *mqtt.Server) error {
	var errs []error
	if _, err := sweepTicker(srv); err != nil {
		errs = append(errs, err)
	}
	probe := srv.NewClient(nil, "verify", "verify", false)
	if _, err := deliveryCounter(probe); err != nil {
		errs = append(errs, err)
	}
	if _, err := takenOverFlag(probe); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("mochi-mqtt is not the v2.7.9 Moat was built for (%w): refusing to run without its fixes", err)
	}
	return nil
}

// StopRetainedSweep stops mochi's per-second sweep of the whole retained
// map (38 % of a core idle at 100k retained messages, stalls of seconds at
// 1M); the broker expires retained messages itself, from a heap.
func StopRetainedSweep(srv *mqtt.Server) error {
	t, err := sweepTicker(srv)
	if err != nil {
		return err
	}
	t.Stop()
	return nil
}

func sweepTicker(srv *mqtt.Server) (*time.Ticker, error) {
	loop := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !loop.IsValid() || loop.Kind() != reflect.Pointer || loop.IsNil() {
		return nil, errors.New("mochi server has no event loop field")
	}
	f := loop.Elem().FieldByName("retainedExpiry")
	if !f.IsValid() || f.Type() != reflect.TypeOf((*time.Ticker)(nil)) {
		return nil, errors.New("mochi event loop has no retainedExpiry ticker")
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*time.Ticker), nil
}

// deliveryCounter is mochi v2.7.9's unexported per-client counter of
// delivery packet identifiers.
func deliveryCounter(cl *mqtt.Client) (*uint32, error) {
	f := reflect.ValueOf(&cl.State).Elem().FieldByName("packetID")
	if !f.IsValid() || f.Kind() != reflect.Uint32 {
		return nil, errors.New("mochi client state has no packetID counter")
	}
	return (*uint32)(unsafe.Pointer(f.UnsafeAddr())), nil
}

// MarkTakenOver tells mochi that cl's client id belongs to a newer
// connection, so the end of cl's session leaves that connection's
// subscriptions and registration alone. mochi removes a clean session by
// its client id after its read loop ends unless it was taken over, and it
// marks the takeover only after the newer connection is on its way: a
// clean session ending just then removed the newcomer's subscriptions and
// its entry in the client list (its messages were lost).
func MarkTakenOver(cl *mqtt.Client) {
	if f, err := takenOverFlag(cl); err == nil {
		f.Store(true)
	}
}

func takenOverFlag(cl *mqtt.Client) (*atomic.Bool, error) {
	f := reflect.ValueOf(&cl.State).Elem().FieldByName("isTakenOver")
	if !f.IsValid() || f.Type() != reflect.TypeOf(atomic.Bool{}) {
		return nil, errors.New("mochi client state has no isTakenOver flag")
	}
	return (*atomic.Bool)(unsafe.Pointer(f.UnsafeAddr())), nil
}

// Persistent is mochi's rule for a session that outlives its connection.
func Persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}
