package broker_test

import (
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// mochi checks the write ACL before resolving topic aliases (an alias-only
// PUBLISH reaches the check with an empty topic). Moat advertises no
// aliases and re-checks the resolved topic: neither form reaches bob.
func TestTopicAliasCannotBypassACL(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL})
	bob := connect(t, tb.addr, as(5, "bob", "bob-sub"))
	bob.mustSubscribe("bob/#")
	alice := connect(t, tb.addr, as(5, "alice", "alice-alias"))
	alice.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   "bob/x", Payload: []byte("with alias"),
		Properties: packets.Properties{TopicAlias: 1, TopicAliasFlag: true},
	})
	alice.write(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		Payload:     []byte("alias only"),
		Properties:  packets.Properties{TopicAlias: 1, TopicAliasFlag: true},
	})
	// Once alice's PINGREQ is answered (or her connection is closed), her
	// publishes were processed; then an ordered marker on bob's side.
	_ = alice.WriteBytes([]byte{packets.Pingreq << 4, 0})
	if !alice.WaitUntil(waitLong, func(s mqtttest.State) bool {
		for _, a := range s.Pending {
			if a.FixedHeader.Type == packets.Pingresp {
				return true
			}
		}
		return s.Err != nil
	}) {
		t.Fatal("alice's publishes were not processed")
	}
	marker := connect(t, tb.addr, as(5, "bob", "bob-marker"))
	marker.publish("bob/marker", "m", 1, false)
	if !bob.waitTopic("bob/marker") {
		t.Fatal("marker not received")
	}
	if got := without(bob.topics(), "bob/marker"); len(got) != 0 {
		t.Fatalf("bob received %v through topic aliases", got)
	}
}
