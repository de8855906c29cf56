package broker_test

import (
	"fmt"
	"testing"
)

// A client that disconnects and at once reconnects with the same client
// id keeps what its new session subscribes to and keeps receiving: mochi
// removes an ended clean session by its id, and when that came after the
// newcomer was attached it took the newcomer's subscriptions and client
// list entry with it (messages were silently lost).
func TestImmediateReconnectKeepsNewSession(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	pub := connect(t, tb.addr, as(5, "alice", "rc-pub"))
	lost := 0
	for round := range 150 {
		v := byte(4 + round%2)
		old := connect(t, tb.addr, as(v, "alice", "rc"))
		old.mustSubscribe("alice/rc/#")
		old.disconnect() // DISCONNECT, and no wait for the broker to finish with it
		c := connect(t, tb.addr, as(v, "alice", "rc"))
		c.mustSubscribe("alice/rc/#")
		topic := fmt.Sprintf("alice/rc/%d", round)
		pub.publish(topic, "x", 1, false)
		if !c.waitTopic(topic) {
			lost++
			t.Errorf("round %d (v%d): the reconnected session missed %s", round, v, topic)
			if lost > 3 {
				t.FailNow()
			}
		}
		c.disconnect()
	}
}
