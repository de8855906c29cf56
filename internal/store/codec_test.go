package store

import (
	"bytes"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func sampleRecords() [][]byte {
	msg := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true, Dup: true},
		ProtocolVersion: 5, PacketID: 7, Created: 1700000000, Expiry: -3,
		TopicName: "a/b", Origin: "dev", Payload: []byte("hello"),
		Properties: packets.Properties{
			PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 60,
			ContentType: "text/plain", ResponseTopic: "r", CorrelationData: []byte{1, 2},
			User: []packets.UserProperty{{Key: "k", Val: "v"}}, SubscriptionIdentifier: []int{1, 268435455},
		},
	}
	cl := clientRecord{
		Listener: "tcp", Username: []byte("alice"), Clean: true, ProtocolVersion: 5,
		Props: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true,
			RequestProblemInfoFlag: true, ReceiveMaximum: 10, TopicAliasMaximum: 3, MaximumPacketSize: 1 << 20,
			AuthenticationMethod: "m", User: []packets.UserProperty{{Key: "a", Val: "b"}}},
		Will: mqtt.Will{Flag: 1, Qos: 2, Retain: true, WillDelayInterval: 5, TopicName: "will", Payload: []byte("bye")},
	}
	sub := packets.Subscription{Qos: 2, RetainHandling: 1, NoLocal: true, RetainAsPublished: true, Identifier: 42}
	var empty packets.Packet
	empty.FixedHeader.Type = packets.Publish
	return [][]byte{
		append([]byte{0}, appendMessage(nil, &msg)...),
		append([]byte{0}, appendMessage(nil, &empty)...),
		append([]byte{1}, appendClient(nil, &cl)...),
		append([]byte{1}, appendClient(nil, &clientRecord{})...),
		append([]byte{2}, appendSub(nil, &sub)...),
		append([]byte{3}, appendPending(nil, &msg, []pendingTarget{
			{{id: "a", qos: 1, ids: []int{3}}},
			{{id: "g1", qos: 2, rap: true}, {id: "g2", qos: 1}},
		})...),
		append([]byte{3}, appendPending(nil, &empty, nil)...),
	}
}

// roundTrip decodes data as record kind k; whatever decodes must re-encode
// to the same bytes.
func roundTrip(t *testing.T, k byte, data []byte) {
	var out []byte
	var err error
	switch k % 4 {
	case 0:
		var pk packets.Packet
		if pk, err = decodeMessage(data); err == nil {
			out = appendMessage(nil, &pk)
		}
	case 1:
		var c clientRecord
		if c, err = decodeClient(data); err == nil {
			out = appendClient(nil, &c)
		}
	case 2:
		var s packets.Subscription
		if s, err = decodeSub(data); err == nil {
			out = appendSub(nil, &s)
		}
	case 3:
		var pk packets.Packet
		var targets []pendingTarget
		if pk, targets, err = decodePending(data); err == nil {
			out = appendPending(nil, &pk, targets)
		}
	}
	if err == nil && !bytes.Equal(out, data) {
		t.Fatalf("kind %d: re-encoding differs\n in  %x\n out %x", k%4, data, out)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, rec := range sampleRecords() {
		k, data := rec[0], rec[1:]
		roundTrip(t, k, data)
		for i := range data { // every truncation is an error, never a panic
			roundTrip(t, k, data[:i])
		}
	}
	pk, err := decodeMessage(sampleRecords()[0][1:])
	if err != nil || pk.TopicName != "a/b" || pk.Properties.SubscriptionIdentifier[1] != 268435455 || !pk.FixedHeader.Dup {
		t.Fatalf("decoded %+v, %v", pk, err)
	}
	bad := []struct {
		name string
		kind byte
		data []byte
	}{
		{"overlong varint", 2, []byte{0, 0, 0, 0x80, 0x00}},
		{"trailing", 2, []byte{0, 0, 0, 0, 0}},
		{"unknown flag", 2, []byte{0x80, 0, 0, 0}},
		{"qos 3", 2, []byte{0, 3, 0, 0}},
		{"huge count", 1, append([]byte{0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0x0f)},
	}
	for _, b := range bad {
		var err error
		switch b.kind {
		case 1:
			_, err = decodeClient(b.data)
		case 2:
			_, err = decodeSub(b.data)
		}
		if err == nil {
			t.Errorf("%s: decoded", b.name)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, rec := range sampleRecords() {
		f.Add(rec[0], rec[1:])
	}
	f.Fuzz(roundTripFuzz)
}

func roundTripFuzz(t *testing.T, k byte, data []byte) { roundTrip(t, k, data) }
