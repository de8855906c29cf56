package cluster

import (
	"bytes"
	"reflect"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	cases := []Message{
		{Topic: "a/b", Payload: []byte("x"), Node: "n1", Origin: "c1"},
		{Topic: "a", QoS: 2, Retain: true, Created: 1700000000, Node: "node \"quoted\"", Origin: "ip=1.2.3.4\n",
			Props: Props{PayloadFormat: 1, PayloadFormatSet: true, MessageExpiry: 1<<32 - 1, ContentType: "text/plain",
				ResponseTopic: "r/t", CorrelationData: []byte{0, 1, 2}, User: []UserProperty{{"k", "v"}, {"", ""}, {"k", "v2"}}}},
		{Topic: "e", QoS: 1, Payload: bytes.Repeat([]byte{0xff}, 64<<10)},
	}
	for _, m := range cases {
		got, err := decodeMessage(m.Topic, m.encode())
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if m.Payload == nil {
			m.Payload = []byte{}
		}
		if !reflect.DeepEqual(*got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", *got, m)
		}
	}
}

func TestDecodeRefusesMalformed(t *testing.T) {
	good := (&Message{Node: "n", Origin: "o", Payload: []byte("p"), Props: Props{User: []UserProperty{{"a", "b"}}}}).encode()
	bad := [][]byte{nil, {}, {2}, {1}, {1, 3, 0}, {1, 0x80, 0, 0, 0}, good[:5], {1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	for _, b := range bad {
		if _, err := decodeMessage("t", b); err == nil {
			t.Errorf("decodeMessage(%x) accepted", b)
		}
	}
}

func FuzzDecodeMessage(f *testing.F) {
	f.Add((&Message{Node: "n", Origin: "o", Payload: []byte("p"), QoS: 1, Props: Props{User: []UserProperty{{"a", "b"}}}}).encode())
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMessage("t", b)
		if err != nil {
			return
		}
		again, err := decodeMessage("t", m.encode())
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoding changed the message: %+v vs %+v (%v)", m, again, err)
		}
	})
}
