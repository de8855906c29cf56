package acl

import (
	"os"
	"strings"
	"testing"
)

// testdata/homeassistant.acl is the house layout of homeassistant.md §4c.
func loadHouse(t *testing.T) *Rules {
	t.Helper()
	b, err := os.ReadFile("testdata/homeassistant.acl")
	if err != nil {
		t.Fatal(err)
	}
	r, warnings, err := Parse("homeassistant.acl", b)
	if err != nil || len(warnings) > 0 {
		t.Fatalf("Parse: %v %q", err, warnings)
	}
	return r
}

// homeassistant.md §4e: every filter of the house and the strict-mode answer.
func TestHomeAssistantStrictSubscribe(t *testing.T) {
	r := loadHouse(t)
	components := strings.Split("alarm_control_panel binary_sensor button camera climate cover date datetime "+
		"device_automation device_tracker event fan humidifier image lawn_mower light lock notify number scene "+
		"siren select sensor switch tag text time update vacuum valve water_heater device", " ")
	var discovery []string
	for _, c := range components {
		discovery = append(discovery, "homeassistant/"+c+"/+/config", "homeassistant/"+c+"/+/+/config")
	}
	if len(discovery) != 64 {
		t.Fatalf("%d discovery filters", len(discovery))
	}
	granted := map[string][]string{
		"homeassistant": append(discovery,
			"homeassistant/+/+/config", "homeassistant/+/+/+/config", // before 2024.6
			"esphome/discover/#", "tasmota/discovery/#",
			"zigbee2mqtt/bridge/state", "zigbee2mqtt/lamp", "zigbee2mqtt/lamp/availability",
			"zigbee2mqtt/bridge/info", "zigbee2mqtt/bridge/response/networkmap",
			"livingroom/status", "livingroom/sensor/temperature/state",
			"tele/tasmota_1A2B3C/LWT", "tele/tasmota_1A2B3C/STATE", "tele/tasmota_1A2B3C/SENSOR",
			"stat/tasmota_1A2B3C/RESULT", "stat/tasmota_1A2B3C/POWER",
			"frigate/available", "frigate/front/person", "frigate/front/person/state",
			"frigate/front/motion", "frigate/front/review_status", "frigate/tracked_object_update"),
		"zigbee2mqtt":    {"zigbee2mqtt/#", "homeassistant/status", "homeassistant/#"},
		"livingroom":     {"livingroom/switch/relay/command", "esphome/discover", "esphome/ping/livingroom"},
		"tasmota_1A2B3C": {"cmnd/tasmota_1A2B3C/#", "cmnd/tasmotas/#", "cmnd/DVES_1A2B3C_fb/#"},
		"frigate":        {"frigate/#"},
		"zwave": {"homeassistant/status", "zwave/_CLIENTS/ZWAVE_GATEWAY-zwavejs2mqtt/broadcast/#",
			"zwave/_CLIENTS/ZWAVE_GATEWAY-zwavejs2mqtt/api/#", "zwave/_CLIENTS/ZWAVE_GATEWAY-zwavejs2mqtt/multicast/#",
			"zwave/+/+/+/+/+/set"},
		"shellyplus1-a8032ab12345": {"shellyplus1-a8032ab12345/rpc", "shellyplus1-a8032ab12345/command/#"},
		"nodered":                  {"zigbee2mqtt/#"},
		"alice":                    {"alice/#"},
	}
	refused := map[string][]string{
		"homeassistant": {"arwn/#", "drop_connect/discovery/#", "dsmr/#", "fully/deviceInfo/+",
			"/greencell/broadcast/device", "inels/status/#", "pglab/discovery/#", "cloudapp/QBUSMQTTGW/state",
			"cloudapp/QBUSMQTTGW/config", "cloudapp/QBUSMQTTGW/+/state", "#", "+/+/BTtoMQTT/#", "shellies/+/relay/0"},
		"nodered": {"#"},
		"alice":   {"#", "zigbee2mqtt/#", "homeassistant/#"},
	}
	for name, filters := range granted {
		c := user(name, "id-"+name)
		for _, f := range filters {
			if !r.CanSubscribe(c, f, true) {
				t.Errorf("%s: %s refused: %v", name, f, r.Explain(c, OpSubscribe, f, true))
			}
		}
	}
	for name, filters := range refused {
		c := user(name, "id-"+name)
		for _, f := range filters {
			if r.CanSubscribe(c, f, true) {
				t.Errorf("%s: %s granted: %v", name, f, r.Explain(c, OpSubscribe, f, true))
			}
			if !r.CanSubscribe(c, f, false) {
				t.Errorf("%s: %s refused in non-strict mode", name, f)
			}
		}
	}
}

// homeassistant.md §4d: the publish side.
func TestHomeAssistantPublish(t *testing.T) {
	r := loadHouse(t)
	tests := []struct {
		who, topic string
		allow      bool
	}{
		{"homeassistant", "zigbee2mqtt/lamp/set", true},
		{"homeassistant", "livingroom/switch/relay/command", true},
		{"homeassistant", "cmnd/tasmota_1A2B3C/POWER", true},
		{"homeassistant", "frigate/front/detect/set", true},
		{"homeassistant", "homeassistant/status", true},
		{"homeassistant", "zigbee2mqtt/bridge/state", false},
		{"zigbee2mqtt", "zigbee2mqtt/bridge/state", true},
		{"zigbee2mqtt", "homeassistant/light/0x1/light/config", true},
		{"livingroom", "homeassistant/sensor/livingroom/temp/config", true},
		{"livingroom", "homeassistant/sensor/kitchen/temp/config", false},
		{"alice", "homeassistant/switch/evil/config", false},
		{"alice", "zigbee2mqtt/lamp/set", false},
		{"alice", "alice/notes", true},
	}
	for _, tt := range tests {
		if got := r.CanWrite(user(tt.who, "id"), tt.topic); got != tt.allow {
			t.Errorf("%s write %s = %v, want %v", tt.who, tt.topic, got, tt.allow)
		}
	}
}
