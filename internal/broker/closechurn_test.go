package broker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// A stop while clients come and go ends: mochi's own per-listener
// disconnect takes its client list's read lock twice, and a client
// leaving in between deadlocked Close (seen in this suite).
func TestCloseWhileClientsChurn(t *testing.T) {
	for round := range 15 {
		tb := startBroker(t, setup{anonymous: true, users: map[string]string{}})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					c, _, err := mqtttest.Dial(tb.addr, mqtttest.Options{Version: 5, ClientID: fmt.Sprintf("churn-%d-%d", w, i%4), KeepAlive: 30, Timeout: 2 * time.Second})
					if err != nil {
						continue
					}
					_ = c.Close()
				}
			})
		}
		time.Sleep(50 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := tb.b.Close(ctx)
		cancel()
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
	}
}
