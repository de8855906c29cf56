package broker

import (
	"errors"
	"io"
	"log/slog"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// connLog logs connects and disconnects (mosquitto's connection_messages,
// on by default).
type connLog struct {
	mqtt.HookBase
	log *slog.Logger
	// on is connection_messages; a reload may turn it off or on.
	on *atomic.Bool
}

var _ mqtt.Hook = (*connLog)(nil)

func (*connLog) ID() string { return "moat-connection-messages" }

func (*connLog) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

func (h *connLog) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if !h.on.Load() {
		return
	}
	h.log.Info("client connected", "client", cl.ID, "user", string(cl.Properties.Username),
		"ip", cl.Net.Remote, "listener", cl.Net.Listener, "protocol", cl.Properties.ProtocolVersion,
		"clean", cl.Properties.Clean, "keepalive", cl.State.Keepalive)
}

func (h *connLog) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if cl.Net.Conn == nil || cl.Net.Inline || !h.on.Load() {
		return // a session restored from the store at start
	}
	reason := "client disconnected"
	if err != nil && !errors.Is(err, io.EOF) {
		reason = err.Error()
	}
	h.log.Info("client disconnected", "client", cl.ID, "user", string(cl.Properties.Username),
		"ip", cl.Net.Remote, "listener", cl.Net.Listener, "reason", reason)
}
