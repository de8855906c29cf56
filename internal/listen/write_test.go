package listen

import (
	"strings"

	"github.com/mochi-mqtt/server/v2/packets"
	"testing"
	"time"
)

// A subscriber that stops reading fills its TCP window; mochi writes with
// no deadline, so without the listener's write timeout the server's Close
// (which writes a DISCONNECT to every client) would block for ever.
func TestStalledReaderDoesNotBlockClose(t *testing.T) {
	for _, ws := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "ws"}[ws]
		t.Run(name, func(t *testing.T) {
			srv, l := newBroker(t, Options{WebSocket: ws, MaxPacketSize: 128 << 10, WriteTimeout: 300 * time.Millisecond})
			dial := func() *client {
				if ws {
					c, _, err := dialWS(t, wsURL("ws", l, "/mqtt"), nil, nil)
					if err != nil {
						t.Fatal(err)
					}
					return newClient(t, c, 4)
				}
				return newClient(t, dialTCP(t, "", l.Address()), 4)
			}
			stalled := dial()
			stalled.connect("stalled")
			stalled.subscribe("t")
			pub := dial()
			pub.connect("pub")
			payload := strings.Repeat("x", 64<<10)
			for i := 0; i < 600; i++ {
				pub.publish("t", payload)
			}
			done := make(chan struct{})
			// What mochi's Close does for each listener (the test cleanup
			// closes the server itself; mochi panics on a second Close).
			go func() {
				l.Close(func(id string) {
					for _, cl := range srv.Clients.GetByListener(id) {
						_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
					}
				})
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("Close blocked on a client that does not read")
			}
		})
	}
}
