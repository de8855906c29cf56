package broker_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// All retained messages matching a new subscription arrive, even when the
// subscriber is slow to read and they outnumber a small outbound queue
// (mochi drops what does not fit in it).
func TestManyRetainedMessagesDeliveredOnSubscribe(t *testing.T) {
	const n = 3000
	tb := startBroker(t, setup{acl: tableBACL})
	pub := connect(t, tb.addr, as(4, "alice", "seeder"))
	payload := strings.Repeat("r", 2048)
	for i := 0; i < n; i++ {
		pub.publish(fmt.Sprintf("alice/dev/%d", i), payload, 0, true)
	}
	pub.ping()

	conn := rawConn(t, tb.addr, "", 4, true)
	var buf bytes.Buffer
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "alice/dev/#"}}}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	conn.Write(buf.Bytes())
	// Read nothing for a while: the socket buffers fill and the rest
	// waits in the broker's outbound queue.
	time.Sleep(500 * time.Millisecond)
	r := bufio.NewReader(conn)
	got := 0
	conn.SetReadDeadline(time.Now().Add(waitLong))
	for got < n {
		h, err := r.ReadByte()
		if err != nil {
			t.Fatalf("received %d of %d retained messages: %v", got, n, err)
		}
		size, mul := 0, 1
		for {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			size += int(b&127) * mul
			mul *= 128
			if b < 128 {
				break
			}
		}
		if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
			t.Fatal(err)
		}
		if h>>4 == packets.Publish {
			got++
		}
	}
}
