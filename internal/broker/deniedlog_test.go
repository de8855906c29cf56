package broker_test

import (
	"strings"
	"testing"
)

// A PUBLISH dropped by the ACL leaves a trace, like mosquitto's "Denied
// PUBLISH from ...", and a client retrying in a loop does not flood the log.
func TestDeniedPublishIsLogged(t *testing.T) {
	tb := startBroker(t, setup{acl: "pattern readwrite %u/#\n"})
	for _, v := range []byte{4, 5} {
		t.Run(versionName(v), func(t *testing.T) {
			id := "denied-" + versionName(v)
			alice := connect(t, tb.addr, as(v, "alice", id))
			before := len(tb.logs.Lines("denied PUBLISH", id))
			hostile := "bob/\x1b[31mred\"quote ip=1.2.3.4\n" + strings.Repeat("x", 4000) // near max_topic_length
			alice.publish(hostile, "no", 1, false)
			for range 200 {
				alice.publish("bob/x", "no", 0, false)
			}
			alice.publish("alice/ok", "marker", 1, false) // the session still works
			lines := waitLog(t, tb.logs, before, "denied PUBLISH", id)
			if n := len(lines) - before; n > 2 {
				t.Errorf("%d denied PUBLISH lines for 201 denials: not rate-limited", n)
			}
			line := lines[before]
			if !strings.Contains(line, "user=alice") || !strings.Contains(line, `topic="bob/\x1b[31mred\"quote ip=1.2.3.4\n`) {
				t.Errorf("line does not name user and escaped topic: %.300q", line)
			}
			if len(line) > 2000 {
				t.Errorf("a 4 KiB topic made a %d-byte log line", len(line))
			}
			bob := connect(t, tb.addr, as(v, "bob", "bob-"+id))
			if got := bob.publish("bob/x", "yes", 1, false); got.code >= 0x80 && got.code != noAck {
				t.Errorf("bob refused after alice's denials: 0x%02x", got.code)
			}
			bob.disconnect()
			alice.disconnect()
		})
	}
}
