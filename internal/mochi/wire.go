package mochi

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Wire makes what mochi writes fit the client's protocol version and its
// CONNECT requests, the last step before encoding:
//   - 3.1.1 and 3.1 clients never get a DISCONNECT: it does not exist in
//     that direction there, and mochi writes one on takeover, on a quota
//     breach and on a refused publish. The connection just closes.
//   - Request Problem Information 0 forbids reason strings and user
//     properties on acknowledgements; mochi strips them from PUBLISH too,
//     where the user properties are the message's own content.
//   - A reason string or user properties that would push a packet past
//     the client's Maximum Packet Size are left out (MQTT 5 §3.4.2.2):
//     mochi's estimate ignores the fixed header and then refuses to write
//     the whole packet, so the client waits for an ack that never comes.
//
// Acknowledgements inheriting the PUBLISH's properties are turned off by
// Compatibilities.NoInheritedPropertiesOnAck in capabilities.
type Wire struct{ mqtt.HookBase }

var _ mqtt.Hook = (*Wire)(nil)

func (*Wire) ID() string { return "moat-wire" }

func (*Wire) Provides(b byte) bool { return b == mqtt.OnPacketEncode }

// OnPacketEncode adjusts pk as described on Wire.
func (*Wire) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Disconnect:
		if cl.Properties.ProtocolVersion < 5 {
			// An unknown type makes mochi's WritePacket fail before any byte
			// is written; its callers close the connection regardless.
			pk.FixedHeader.Type = packets.Reserved
			return pk
		}
	case packets.Publish:
		pk.Mods.DisallowProblemInfo = false
		return pk
	}
	if pk.Mods.MaxSize > 0 && !pk.Mods.DisallowProblemInfo &&
		(pk.Properties.ReasonString != "" || len(pk.Properties.User) > 0) &&
		encodedLen(pk) > int(pk.Mods.MaxSize) {
		pk.Properties.ReasonString = ""
		pk.Properties.User = nil
	}
	return pk
}

// encodedLen is the size of pk on the wire, or 0 when the type carries no
// reason string.
func encodedLen(pk packets.Packet) int {
	pk.Mods.MaxSize = 0 // measure what would be written without the limit
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Suback:
		err = pk.SubackEncode(&buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Auth:
		err = pk.AuthEncode(&buf)
	default:
		return 0
	}
	if err != nil {
		return 0
	}
	return buf.Len()
}
