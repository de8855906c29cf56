package main

import (
	"bufio"
	"bytes"
	"testing"
)

// The generator's codec must frame packets exactly, or every figure is wrong.
func TestCodecRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		qos     byte
		id      uint16
		payload []byte
	}{
		{"qos0 small", 0, 0, []byte("x")},
		{"qos1", 1, 513, bytes.Repeat([]byte{7}, 64)},
		{"two-byte length", 0, 0, make([]byte, 200)},
		{"three-byte length", 1, 65535, make([]byte, 20000)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := encodePublish("fi1/x", tt.qos, tt.id, tt.payload)
			c := &client{r: bufio.NewReader(bytes.NewReader(append(pkt, pkt...)))}
			first, body, err := c.read()
			if err != nil {
				t.Fatal(err)
			}
			if first>>4 != typePublish || (first>>1)&3 != tt.qos {
				t.Fatalf("first byte %#x", first)
			}
			id, payload, ok := publishPayload(first, body)
			if !ok || id != tt.id || !bytes.Equal(payload, tt.payload) {
				t.Fatalf("got id %d payload %d bytes ok %v", id, len(payload), ok)
			}
			if typ, err := c.skip(); err != nil || typ != typePublish {
				t.Fatalf("skip: %d %v", typ, err)
			}
		})
	}
}
