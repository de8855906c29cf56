package broker_test

import (
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestLogsNeverCarrySecrets sends a marker payload and a marker password
// through every path that logs (good and bad logins, bans, allowed,
// denied, oversized and malformed publishes, Wills, reloads) with debug
// logging on, and checks no log line contains either marker.
func TestLogsNeverCarrySecrets(t *testing.T) {
	const payload = "PAYLOAD-MARKER-7f3a"
	const secret = "PASSWORD-MARKER-91c2"
	users := map[string]string{"alice": passwords["alice"], "bob": passwords["bob"], "marker": secret}
	tb := startBroker(t, setup{users: users, acl: tableBACL, conf: "message_size_limit 64\nmax_packet_size 512\nban_threshold 2\n"})

	for _, v := range []byte{4, 5} {
		// Logins: right and wrong marker passwords, then a ban.
		c := connect(t, tb.addr, opts{v: v, id: "m1", user: "marker", hasUser: true, pass: secret, hasPass: true, keepalive: 30})
		for _, qos := range []byte{0, 1, 2} {
			c.publish("marker/x", payload, qos, false)
			c.publish("marker/r", payload, qos, true)
			c.publish("bob/x", payload, qos, false) // denied
		}
		c.publish("marker/big", strings.Repeat(payload, 4), 1, false) // over message_size_limit
		c.disconnect()
		for i := 0; i < 4; i++ {
			bad, _ := dial(t, tb.addr, opts{v: v, id: "m2", user: "alice", hasUser: true, pass: secret, hasPass: true, keepalive: 30})
			bad.drop()
		}
		// Wills with the marker: allowed (fired) and denied.
		will := &packets.Packet{TopicName: "marker/will", Payload: []byte(payload), FixedHeader: packets.FixedHeader{Qos: 1, Retain: true}}
		w := connect(t, tb.addr, opts{v: v, id: "m3", user: "marker", hasUser: true, pass: secret, hasPass: true, keepalive: 30, will: will})
		w.drop()
		denied := &packets.Packet{TopicName: "bob/will", Payload: []byte(payload)}
		d, _ := dial(t, tb.addr, opts{v: v, id: "m4", user: "marker", hasUser: true, pass: secret, hasPass: true, keepalive: 30, will: denied})
		d.drop()
		// An oversized packet carrying the marker.
		o := connect(t, tb.addr, opts{v: v, id: "m5", user: "marker", hasUser: true, pass: secret, hasPass: true, keepalive: 30})
		o.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "marker/huge", Payload: []byte(strings.Repeat(payload, 40))})
		o.waitClosed()
	}
	// A reload, good and bad.
	if err := tb.b.Reload(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, tb.passwd, "marker:"+secret+"\n")
	if err := tb.b.Reload(); err == nil || strings.Contains(err.Error(), secret) {
		t.Fatalf("reload of a plaintext entry: %v", err)
	}

	logs := tb.logs.String()
	t.Logf("redacted attrs: %d", strings.Count(logs, "[redacted]"))
	if !strings.Contains(logs, "authentication failed") || !strings.Contains(logs, "level=DEBUG") {
		t.Fatalf("the paths were not exercised with debug logging:\n%s", logs)
	}
	for _, m := range []string{payload, secret} {
		if strings.Contains(logs, m) {
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, m) {
					t.Errorf("marker %q logged: %s", m, line)
				}
			}
		}
	}
}
