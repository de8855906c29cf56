package broker_test

import (
	"strings"
	"testing"
	"time"
)

func TestConnectionMessages(t *testing.T) {
	for _, on := range []bool{true, false} {
		conf := ""
		if !on {
			conf = "connection_messages false\n"
		}
		tb := startBroker(t, setup{acl: tableBACL, conf: conf})
		c := connect(t, tb.addr, as(5, "alice", "cm1"))
		c.disconnect()
		deadline := time.Now().Add(waitLong)
		for on && !strings.Contains(tb.logs.String(), `msg="client disconnected" component=mqtt client=cm1`) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		logs := tb.logs.String()
		connected := strings.Contains(logs, `msg="client connected" component=mqtt client=cm1 user=alice ip=127.0.0.1:`)
		disconnected := strings.Contains(logs, `msg="client disconnected" component=mqtt client=cm1 user=alice`)
		if connected != on || disconnected != on {
			t.Fatalf("connection_messages %v: connected logged %v, disconnected logged %v\n%s", on, connected, disconnected, logs)
		}
	}
}
