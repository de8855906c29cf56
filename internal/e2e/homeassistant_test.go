package e2e

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// haDemoPasswords are the published demo passwords of sample/homeassistant
// (its README lists them); the sample's passwd holds their hashes.
func haDemoPasswords() map[string]string {
	return map[string]string{
		"homeassistant":  "ha-demo-otter-41",
		"zigbee2mqtt":    "z2m-demo-heron-72",
		"livingroom":     "esp-demo-finch-13",
		"tasmota_1A2B3C": "tas-demo-lynx-58",
		"frigate":        "frigate-demo-moth-90",
		"zwave":          "zwave-demo-newt-37",
		"alice":          "alice-demo-pike-15",
		"bob":            "bob-demo-vole-82",
	}
}

// haPython finds a python3 that can import paho-mqtt: Debian's
// python3-paho-mqtt lives under /usr/bin/python3, which a version manager
// earlier in PATH may hide.
func haPython(t *testing.T) string {
	t.Helper()
	cands := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		cands = append(cands, p)
	}
	for _, py := range cands {
		if _, _, err := RunCommand(t, 30*time.Second, nil, py, "-c", "import paho.mqtt.client"); err == nil {
			return py
		}
	}
	testenv.Missing(t, "python3-paho-mqtt", "apt-get install python3-paho-mqtt")
	return ""
}

// haStartReport is what the script saw of one Home Assistant start.
type haStartReport struct {
	ClientIDLen    int    `json:"client_id_len"`
	Protocol       int    `json:"protocol"`
	Transport      string `json:"transport"`
	SubidAvailable *int   `json:"subid_available"`
	SubidChecked   int    `json:"subid_checked"`
	SubidMismatch  []struct {
		Topic  string `json:"topic"`
		Retain bool   `json:"retain"`
		Got    []int  `json:"got"`
		Want   []int  `json:"want"`
	} `json:"subid_mismatch"`
	Connack     *int            `json:"connack"`
	Discovery   map[string]*int `json:"discovery"`
	Integration map[string]*int `json:"integration"`
	Bulk        []struct {
		Filter string `json:"filter"`
		Code   *int   `json:"code"`
	} `json:"bulk"`
	SubscribePackets      int            `json:"subscribe_packets"`
	Subacks               int            `json:"subacks"`
	Retained              map[string]int `json:"retained"`
	AliceSeen             bool           `json:"alice_seen"`
	BirthToZigbee2MQTT    bool           `json:"birth_to_zigbee2mqtt"`
	BirthToZwave          bool           `json:"birth_to_zwave"`
	AfterBirthBridgeState bool           `json:"after_birth_bridge_state"`
	AfterBirthLamp        bool           `json:"after_birth_lamp"`
	AfterBirthLampRetain  []bool         `json:"after_birth_lamp_retain"`
	Connected             bool           `json:"connected"`
}

type haReport struct {
	Paho        string                    `json:"paho"`
	CallbackAPI int                       `json:"callback_api"`
	Error       string                    `json:"error"`
	Devices     map[string]map[string]any `json:"devices"`
	HA          haStartReport             `json:"ha"`
	HARestarted haStartReport             `json:"ha_restarted"`
	Commands    map[string]any            `json:"commands"`
	Denials     map[string]any            `json:"denials"`
	Restart     map[string]any            `json:"restart"`
	WrongPW     struct {
		Connack   *int `json:"connack"`
		ConnackV5 *int `json:"connack_v5"`
	} `json:"wrong_password"`
}

// The filters Home Assistant subscribes that the sample aclfile does not
// cover: integrations that are not in the house.
var haRefusedWildcards = []string{
	"arwn/#", "drop_connect/discovery/#", "dsmr/#", "fully/deviceInfo/+",
	"inels/status/#", "pglab/discovery/#", "cloudapp/QBUSMQTTGW/+/state",
}

var haRefusedExact = []string{
	"/greencell/broadcast/device", "cloudapp/QBUSMQTTGW/state", "cloudapp/QBUSMQTTGW/config",
}

var haRetainedAtStart = []string{
	"homeassistant/light/0x00158d0001a2b3c4/light/config",
	"homeassistant/device_automation/0x00158d0001a2b3c4/action_single/config",
	"homeassistant/sensor/livingroom/temperature/config",
	"tasmota/discovery/A4CF121A2B3C/config", "tasmota/discovery/A4CF121A2B3C/sensors",
	"esphome/discover/livingroom", "zigbee2mqtt/bridge/state", "livingroom/status",
	"livingroom/sensor/temperature/state", "tele/tasmota_1A2B3C/LWT", "frigate/available",
	"frigate/front/detect/state",
}

const (
	haSubackRefusedV3 = 0x80
	haSubackRefusedV5 = 0x87
)

// haHouse is Moat on the sample Home Assistant passwd and aclfile, with an
// MQTT listener and a TLS WebSocket one on 127.0.0.1.
type haHouse struct {
	moat          *Moat
	port, wssPort int
	caFile, spki  string
	pool          *x509.CertPool
}

// startHAHouse starts the house; wssExtra is added to the WebSocket
// listener's section.
func startHAHouse(t *testing.T, wssExtra string) *haHouse {
	t.Helper()
	root := RepoRoot(t)
	dir := t.TempDir()
	CopyFile(t, filepath.Join(root, "sample/homeassistant/passwd"), filepath.Join(dir, "passwd"), 0o600)
	CopyFile(t, filepath.Join(root, "sample/homeassistant/aclfile"), filepath.Join(dir, "aclfile"), 0o600)
	certFile, keyFile, caFile, pool, spki := haTestCert(t, dir)
	h := &haHouse{port: FreePort(t), wssPort: FreePort(t), caFile: caFile, spki: spki, pool: pool}
	conf := fmt.Sprintf(`allow_anonymous false
password_file %s
acl_file %s
admin_listener off
log_format text

listener %d 127.0.0.1
protocol mqtt

# Home Assistant's websockets transport, with TLS.
listener %d 127.0.0.1
protocol websockets
certfile %s
keyfile %s
%s`, filepath.Join(dir, "passwd"), filepath.Join(dir, "aclfile"), h.port, h.wssPort, certFile, keyFile, wssExtra)
	h.moat = StartMoat(t, WriteConfig(t, dir, conf))
	h.moat.WaitTCP(Loopback(h.port), 30*time.Second)
	h.moat.WaitTCP(Loopback(h.wssPort), 30*time.Second)
	return h
}

// TestHomeAssistantHouse runs Moat on the sample Home Assistant passwd and
// aclfile (strict subscribe) and drives it with paho-mqtt, the library Home
// Assistant uses, imitating Home Assistant and the programs around it.
func TestHomeAssistantHouse(t *testing.T) {
	py := haPython(t)
	root := RepoRoot(t)
	h := startHAHouse(t, "")
	moat, port, wssPort, caFile := h.moat, h.port, h.wssPort, h.caFile

	in, err := json.Marshal(map[string]any{
		"host": "127.0.0.1", "port": port, "wss_port": wssPort, "ca_file": caFile,
		"passwords": haDemoPasswords(),
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, stderr, err := RunCommand(t, 90*time.Second, in, py, filepath.Join(root, "internal/e2e/testdata/homeassistant_house.py"))
	if err != nil {
		t.Fatalf("python: %v\nstdout:\n%s\nstderr:\n%s", err, out, tailBytes(stderr, 4000))
	}
	t.Logf("house script ran in %s", time.Since(start).Round(time.Millisecond))
	var r haReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("script output: %v\n%s", err, out)
	}
	if testing.Verbose() {
		t.Logf("script output: %s", out)
	}
	var all map[string]any
	_ = json.Unmarshal(out, &all)
	if r.Error != "" {
		t.Fatalf("script failed:\n%s\nstderr:\n%s", r.Error, tailBytes(stderr, 4000))
	}
	t.Logf("paho-mqtt %s (callback API %d)", r.Paho, r.CallbackAPI)

	t.Run("devices", func(t *testing.T) {
		for _, name := range []string{"zigbee2mqtt", "livingroom", "tasmota", "frigate", "zwave", "alice"} {
			d := r.Devices[name]
			if d == nil {
				t.Errorf("%s: no report", name)
				continue
			}
			for k, v := range d {
				switch v := v.(type) {
				case float64: // connack
					if v != 0 {
						t.Errorf("%s %s = %v, want 0", name, k, v)
					}
				case bool: // publishes completed, unsubscribe answered, still connected
					if !v {
						t.Errorf("%s %s = false", name, k)
					}
				case []any: // SUBACK codes
					for i, c := range v {
						if c != float64(0) {
							t.Errorf("%s %s[%d] = %v, want granted (0)", name, k, i, c)
						}
					}
				default:
					t.Errorf("%s %s = %v (%T)", name, k, v, v)
				}
			}
			if all[name+"_connected_at_end"] != true {
				t.Errorf("%s was disconnected by the end", name)
			}
		}
	})

	for _, tc := range []struct {
		name     string
		rep      haStartReport
		retained []string
		proto    int
		tr       string
	}{
		{"ha_start", r.HA, haRetainedAtStart, 4, "tcp"},
		// Restarted on MQTT 5 with subscription identifiers, over WSS.
		// The ESPHome node retained its relay state after the command.
		{"ha_restart_mqtt5_wss", r.HARestarted, append(append([]string{}, haRetainedAtStart...), "livingroom/switch/relay/state"), 5, "websockets+tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rep.Protocol != tc.proto || tc.rep.Transport != tc.tr {
				t.Errorf("Home Assistant ran MQTT %d over %q, want %d over %q", tc.rep.Protocol, tc.rep.Transport, tc.proto, tc.tr)
			}
			haCheckStart(t, tc.rep, tc.retained)
		})
	}

	t.Run("commands", func(t *testing.T) {
		for _, topic := range []string{"zigbee2mqtt/lamp/set", "zigbee2mqtt/lamp/set/brightness",
			"zigbee2mqtt/bridge/request/permit_join", "livingroom/switch/relay/command",
			"cmnd/tasmota_1A2B3C/POWER", "frigate/front/detect/set"} {
			if got := r.Commands[topic]; got != float64(1) {
				t.Errorf("command %s delivered %v times, want 1", topic, got)
			}
		}
		haWantBools(t, r.Commands, true, "lamp_state_on_to_ha", "relay_state_to_ha", "tasmota_power_to_ha", "frigate_state_to_ha")
	})

	t.Run("denials", func(t *testing.T) {
		d := r.Denials
		haWantBools(t, d, true,
			"ha_forge_bridge_state_qos0_completed", "ha_forge_bridge_state_qos1_completed",
			"ha_forge_bridge_state_qos2_completed", "marker_to_zigbee2mqtt", "ha_connected_after_forgery",
			"ha_connected_after_hash", "z2m_forge_status_completed", "z2m_connected", "esphome_connected",
			"alice_forged_discovery_completed", "alice_own_retained", "alice_connected", "bob_command_completed",
			"bob_connected")
		haWantBools(t, d, false, "ha_forgery_reached_zigbee2mqtt", "z2m_forgery_reached_zwave",
			"esphome_cross_node_reached_ha", "alice_forgery_reached_ha", "bob_command_reached_zigbee2mqtt")
		if d["ha_subscribe_hash"] != float64(haSubackRefusedV3) {
			t.Errorf("Home Assistant subscribing # got %v, want 0x80", d["ha_subscribe_hash"])
		}
		// paho 2 reports the MQTT 5 PUBACK reason; paho 1.6 does not.
		if r.CallbackAPI == 2 && d["alice_forged_discovery_reason"] != float64(0x87) {
			t.Errorf("alice's forged discovery PUBACK reason %v, want 0x87", d["alice_forged_discovery_reason"])
		}
		haWantCodes(t, "alice (MQTT 5)", d["alice_subscribe"], map[string]int{
			"#": haSubackRefusedV5, "zigbee2mqtt/#": haSubackRefusedV5, "homeassistant/#": haSubackRefusedV5, "alice/#": 0})
		if d["bob_connack"] != float64(0) {
			t.Errorf("bob CONNACK %v", d["bob_connack"])
		}
		haWantCodes(t, "bob", d["bob_subscribe"], map[string]int{
			"zigbee2mqtt/#": haSubackRefusedV3, "zigbee2mqtt/lamp": haSubackRefusedV3,
			"homeassistant/status": haSubackRefusedV3, "bob/#": 0})
		if saw, _ := d["bob_saw"].([]any); len(saw) != 0 {
			t.Errorf("bob received %v", saw)
		}
	})

	t.Run("restart", func(t *testing.T) {
		s := r.Restart
		haWantBools(t, s, true, "will_to_zigbee2mqtt", "will_to_zwave", "zigbee2mqtt_saw_birth",
			"remove_light_completed", "fresh_trigger_retained")
		haWantBools(t, s, false, "will_retain", "clean_disconnect_will")
		if s["will_qos"] != float64(0) {
			t.Errorf("will QoS %v, want 0", s["will_qos"])
		}
		t.Logf("will delivered %vms after Home Assistant's socket closed", s["will_latency_ms"])
		if c, _ := s["fresh_subscribe"].([]any); !reflect.DeepEqual(c, []any{float64(0), float64(0)}) {
			t.Errorf("fresh discovery subscriptions: %v", s["fresh_subscribe"])
		}
		if c, _ := s["legacy_discovery"].([]any); !reflect.DeepEqual(c, []any{float64(0), float64(0)}) {
			t.Errorf("discovery filters of older Home Assistant releases: %v, want granted", s["legacy_discovery"])
		}
		if l, _ := s["fresh_light_retained"].([]any); len(l) != 0 {
			t.Errorf("deleted light discovery still retained: %v", l)
		}
	})

	t.Run("wrong_password", func(t *testing.T) {
		// paho 1.6 reports the 3.1.1 code; paho 2 maps 5 to 135.
		want := 5
		if r.CallbackAPI == 2 {
			want = 135
		}
		if r.WrongPW.Connack == nil || *r.WrongPW.Connack != want {
			t.Errorf("wrong password CONNACK %s, want %d (Home Assistant then asks to re-authenticate)", haCode(r.WrongPW.Connack), want)
		}
		if r.WrongPW.ConnackV5 == nil || *r.WrongPW.ConnackV5 != 0x87 {
			t.Errorf("wrong password MQTT 5 CONNACK %s, want 0x87", haCode(r.WrongPW.ConnackV5))
		}
	})

	t.Run("log", func(t *testing.T) {
		log := moat.Output()
		refused := haRefusedFilters(log)
		for _, f := range haRefusedWildcards {
			// Once per Home Assistant connection: the start and the restart.
			if n := refused["homeassistant "+f]; n != 2 {
				t.Errorf("log: subscription refused for homeassistant %s logged %d times, want 2", f, n)
			}
		}
		for _, uf := range []string{"homeassistant #", "alice #", "alice zigbee2mqtt/#", "alice homeassistant/#", "bob zigbee2mqtt/#"} {
			if refused[uf] != 1 {
				t.Errorf("log: subscription refused for %s logged %d times, want 1", uf, refused[uf])
			}
		}
		for _, f := range haRefusedExact {
			if refused["homeassistant "+f] == 0 {
				t.Logf("note: the refused exact-topic subscription %s is not logged", f)
			}
		}
		for user, pw := range haDemoPasswords() {
			if strings.Contains(log, pw) {
				t.Errorf("log holds %s's password", user)
			}
		}
		if t.Failed() {
			t.Logf("refusals logged: %v", refused)
		}
	})
}

func haCheckStart(t *testing.T, s haStartReport, retained []string) {
	t.Helper()
	if s.Connack == nil || *s.Connack != 0 {
		t.Fatalf("Home Assistant CONNACK %v", s.Connack)
	}
	if s.ClientIDLen != 22 {
		t.Errorf("client id length %d, want 22 (base62 of a UUID)", s.ClientIDLen)
	}
	refusedCode := haSubackRefusedV3
	if s.Protocol == 5 {
		refusedCode = haSubackRefusedV5
		// Home Assistant falls back to slower routing if this is 0.
		if s.SubidAvailable != nil && *s.SubidAvailable == 0 {
			t.Error("CONNACK says subscription identifiers are not available")
		}
		var unmarked []string
		for _, m := range s.SubidMismatch {
			// mochi 2.7.9 sends the retained messages of a new subscription
			// without its identifier (publishRetainedToClient passes the
			// SUBSCRIBE filter, whose Identifiers map is empty).
			if m.Retain && len(m.Got) == 0 {
				unmarked = append(unmarked, m.Topic)
				continue
			}
			t.Errorf("%s (retain=%v): subscription identifiers %v, want %v", m.Topic, m.Retain, m.Got, m.Want)
		}
		if len(unmarked) > 0 {
			t.Logf("known gap: %d of %d messages, all retained ones sent on subscribe, carry no subscription identifier: %v",
				len(unmarked), s.SubidChecked, unmarked)
		}
	}
	if s.SubscribePackets != 64+9+1 || s.Subacks != s.SubscribePackets {
		t.Errorf("%d SUBSCRIBE packets, %d SUBACKs; want 74 each", s.SubscribePackets, s.Subacks)
	}
	refused := map[string]bool{}
	for _, f := range append(append([]string{}, haRefusedWildcards...), haRefusedExact...) {
		refused[f] = true
	}
	check := func(kind, f string, c *int) {
		want := 0
		if refused[f] {
			want = refusedCode
		}
		if c == nil || *c != want {
			t.Errorf("%s filter %s: SUBACK %v, want %#x", kind, f, haCode(c), want)
		}
	}
	if len(s.Discovery) != 64 {
		t.Errorf("%d discovery filters, want 64", len(s.Discovery))
	}
	for f, c := range s.Discovery {
		check("discovery", f, c)
	}
	if len(s.Integration) != 9 {
		t.Errorf("%d integration wildcard filters, want 9", len(s.Integration))
	}
	for f, c := range s.Integration {
		check("integration", f, c)
	}
	// One bulk SUBSCRIBE: refusals are per filter, in order, and do not
	// affect the granted filters beside them.
	if len(s.Bulk) != 21 {
		t.Errorf("bulk SUBACK has %d codes, want 21", len(s.Bulk))
	}
	for _, b := range s.Bulk {
		check("bulk", b.Filter, b.Code)
	}
	want := map[string]int{}
	for _, topic := range retained {
		want[topic] = 1
	}
	if !reflect.DeepEqual(s.Retained, want) {
		t.Errorf("retained deliveries:\n got %v\nwant %v", s.Retained, want)
	}
	if s.AliceSeen {
		t.Error("Home Assistant received alice's private messages")
	}
	if !s.BirthToZigbee2MQTT || !s.BirthToZwave {
		t.Errorf("birth reached zigbee2mqtt=%v zwave=%v", s.BirthToZigbee2MQTT, s.BirthToZwave)
	}
	if !s.AfterBirthBridgeState || !s.AfterBirthLamp {
		t.Errorf("after the birth: bridge/state=%v lamp=%v", s.AfterBirthBridgeState, s.AfterBirthLamp)
	}
	for _, r := range s.AfterBirthLampRetain {
		if r {
			t.Error("live lamp state arrived with retain=1")
		}
	}
	if !s.Connected {
		t.Error("Home Assistant was disconnected")
	}
}

func haCode(c *int) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("%#x", *c)
}

func haWantBools(t *testing.T, m map[string]any, want bool, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
}

func haWantCodes(t *testing.T, who string, got any, want map[string]int) {
	t.Helper()
	m, _ := got.(map[string]any)
	for f, c := range want {
		if m[f] != float64(c) {
			t.Errorf("%s subscribing %s: SUBACK %v, want %#x", who, f, m[f], c)
		}
	}
}

// haRefusedFilters counts "subscription refused" log lines by "user filter".
func haRefusedFilters(log string) map[string]int {
	out := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		kv := haLogFields(sc.Text())
		if kv["msg"] == "subscription refused" {
			out[kv["user"]+" "+kv["filter"]]++
		}
	}
	return out
}

// haLogFields splits one slog text line into its key=value pairs.
func haLogFields(line string) map[string]string {
	kv := map[string]string{}
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			val, rest = rest[:sp], rest[sp:]
		} else {
			val, rest = rest, ""
		}
		kv[key] = val
		line = rest
	}
	return kv
}
