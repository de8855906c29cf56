package broker_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// Without an acl_file $SYS is readable, as in mosquitto; writes stay
// refused. With one, its rules decide.
func TestSysReadableWithoutACL(t *testing.T) {
	tb := startBroker(t, setup{conf: "sys_interval 1\n"})
	for _, v := range []byte{4, 5} {
		c := connect(t, tb.addr, as(v, "alice", "sys-"+versionName(v)))
		if codes := c.subscribe("$SYS/#"); len(codes) != 1 || codes[0] >= 0x80 {
			t.Fatalf("%s: SUBSCRIBE $SYS/# refused: %x", versionName(v), codes)
		}
		got := false
		c.WaitUntil(waitLong, func(s mqtttest.State) bool {
			got = slices.ContainsFunc(s.Messages, func(m packets.Packet) bool { return strings.HasPrefix(m.TopicName, "$SYS/") })
			return got || s.Err != nil
		})
		if !got {
			t.Errorf("%s: no $SYS message received", versionName(v))
		}
		c.disconnect()
	}
	w := connect(t, tb.addr, as(5, "alice", "sys-writer"))
	if got := w.publish("$SYS/broker/uptime", "forged", 1, false); got.code < 0x80 {
		t.Errorf("publish to $SYS accepted: 0x%02x", got.code)
	}

	withACL := startBroker(t, setup{acl: "pattern readwrite %u/#\n", conf: "sys_interval 1\n"})
	c := connect(t, withACL.addr, as(5, "alice", "sys-acl"))
	if codes := c.subscribe("$SYS/#"); len(codes) != 1 || codes[0] < 0x80 {
		t.Errorf("with an acl_file lacking $SYS rules: SUBSCRIBE $SYS/# granted: %x", codes)
	}
}
