package mochi

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// WriteAck answers the QoS 1/2 PUBLISH pk with the acknowledgement its QoS
// calls for (PUBACK, or PUBREC at QoS 2) carrying code. It is for the
// places where mochi answers wrongly or not at all: mochi answers a
// refused QoS 2 publish with a PUBACK, which clients cannot match, and
// drops a QoS 1/2 publish to $SYS without any answer. A 3.1.1 ack has no
// reason code, so code is sent to MQTT 5 clients only.
func WriteAck(cl *mqtt.Client, pk packets.Packet, code byte) error {
	if cl.Properties.ProtocolVersion != 5 {
		code = 0
	}
	return cl.WritePacket(ack(pk, code))
}

func ack(pk packets.Packet, code byte) packets.Packet {
	a := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ReasonCode: code}
	if pk.FixedHeader.Qos == 2 {
		a.FixedHeader.Type = packets.Pubrec
	}
	return a
}

// AckBytes is the MQTT 5 acknowledgement of pk with code, encoded, for a
// connection that writes it outside mochi.
func AckBytes(pk packets.Packet, code byte) []byte {
	a := ack(pk, code)
	a.ProtocolVersion = 5
	var buf bytes.Buffer
	var err error
	if a.FixedHeader.Type == packets.Pubrec {
		err = a.PubrecEncode(&buf)
	} else {
		err = a.PubackEncode(&buf)
	}
	if err != nil {
		return nil
	}
	return buf.Bytes()
}
