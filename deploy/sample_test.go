package deploy

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/passwd"
)

const house = "../sample/homeassistant/"

// The demo passwords published in sample/homeassistant/README.md.
var demoPasswords = map[string]string{
	"homeassistant": "ha-demo-otter-41", "zigbee2mqtt": "z2m-demo-heron-72",
	"livingroom": "esp-demo-finch-13", "tasmota_1A2B3C": "tas-demo-lynx-58",
	"shellyplus1pm-a8032ab12345": "shelly-demo-wren-26", "frigate": "frigate-demo-moth-90",
	"zwave": "zwave-demo-newt-37", "nodered": "nodered-demo-crow-64",
	"alice": "alice-demo-pike-15", "bob": "bob-demo-vole-82",
}

func TestSamplePasswd(t *testing.T) {
	f, err := passwd.Load(house + "passwd")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(house + "README.md")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(house + "passwd")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), ":$7$210000$"); n != len(demoPasswords) || f.Len() != len(demoPasswords) {
		t.Fatalf("%d $7$/210000 entries, %d users; want %d", n, f.Len(), len(demoPasswords))
	}
	v := passwd.NewVerifier(2, 0)
	for user, pw := range demoPasswords {
		if !strings.Contains(string(readme), "`"+pw+"`") {
			t.Errorf("README does not publish %s's demo password", user)
		}
		ok, err := v.Verify(context.Background(), f, user, []byte(pw))
		if err != nil || !ok {
			t.Errorf("%s: demo password rejected (%v)", user, err)
		}
	}
}

// A few decisions of homeassistant.md §4e under strict subscribe; the acl
// package models the whole house.
func TestSampleACL(t *testing.T) {
	rules, warnings, err := acl.Load(house + "aclfile")
	if err != nil || len(warnings) > 0 {
		t.Fatalf("aclfile: %v %q", err, warnings)
	}
	tests := []struct {
		user, op, topic string
		want            bool
	}{
		{"homeassistant", "sub", "homeassistant/light/+/config", true},
		{"homeassistant", "sub", "zigbee2mqtt/bridge/state", true},
		{"homeassistant", "sub", "tasmota/discovery/#", true},
		{"homeassistant", "sub", "dsmr/#", false},
		{"homeassistant", "sub", "#", false},
		{"homeassistant", "pub", "zigbee2mqtt/lamp/set", true},
		{"homeassistant", "pub", "zigbee2mqtt/bridge/state", false},
		{"zigbee2mqtt", "sub", "homeassistant/#", true},
		{"zigbee2mqtt", "pub", "homeassistant/light/0x00158d0001a2b3c4/light/config", true},
		{"livingroom", "pub", "homeassistant/sensor/livingroom/temp/config", true},
		{"livingroom", "pub", "homeassistant/sensor/kitchen/temp/config", false},
		{"tasmota_1A2B3C", "pub", "tele/tasmota_1A2B3C/LWT", true},
		{"zwave", "sub", "homeassistant/status", true},
		{"nodered", "sub", "#", false},
		{"alice", "sub", "alice/#", true},
		{"alice", "pub", "homeassistant/switch/evil/config", false},
		{"alice", "sub", "zigbee2mqtt/#", false},
	}
	for _, tt := range tests {
		c := &acl.Client{Username: tt.user, HasUsername: true, ClientID: tt.user}
		var got bool
		if tt.op == "sub" {
			got = rules.CanSubscribe(c, tt.topic, true)
		} else {
			got = rules.CanWrite(c, tt.topic)
		}
		if got != tt.want {
			t.Errorf("%s %s %s = %v, want %v", tt.user, tt.op, tt.topic, got, tt.want)
		}
	}
}
