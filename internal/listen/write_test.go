package listen

import (
	"net"
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

// countConn counts deadline updates reaching the socket.
type countConn struct {
	net.Conn
	reads, writes int
	last          time.Time
}

func (c *countConn) SetReadDeadline(t time.Time) error  { c.reads++; c.last = t; return nil }
func (c *countConn) SetWriteDeadline(t time.Time) error { c.writes++; return nil }
func (c *countConn) Write(p []byte) (int, error)        { return len(p), nil }

func TestDeadlineUpdatesCoalesced(t *testing.T) {
	cc := &countConn{}
	c := newFrameConn(cc, 0, 10*time.Second)
	now := time.Now()
	steps := []struct {
		t         time.Time
		wantReads int
	}{
		{now.Add(90 * time.Second), 1},                      // first: set
		{now.Add(90*time.Second + 100*time.Millisecond), 1}, // small extension, far away: skipped
		{now.Add(92 * time.Second), 2},                      // over a second later: set
		{now.Add(91 * time.Second), 3},                      // earlier: always set
		{time.Time{}, 4},                                    // cleared: set
		{now.Add(3 * time.Second), 5},                       // set
		{now.Add(3*time.Second + 100*time.Millisecond), 6},  // less than 4 s left: always set
	}
	for i, s := range steps {
		if err := c.SetDeadline(s.t); err != nil {
			t.Fatal(err)
		}
		if cc.reads != s.wantReads {
			t.Fatalf("step %d: %d read deadline updates, want %d", i, cc.reads, s.wantReads)
		}
	}
	if !cc.last.Equal(steps[len(steps)-1].t) {
		t.Fatalf("last deadline %v", cc.last)
	}
	for i := 0; i < 100; i++ {
		c.Write([]byte("x"))
	}
	if cc.writes != 1 {
		t.Fatalf("%d write deadline updates for 100 quick writes, want 1", cc.writes)
	}
}
