package mochi

import (
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
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = code
	}
	return cl.WritePacket(ack)
}
