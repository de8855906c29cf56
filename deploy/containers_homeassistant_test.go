package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/containertest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
	"github.com/moat-mqtt/moat/internal/testenv"
)

// haPasswords are the demo passwords sample/homeassistant/README.md
// publishes for its passwd.
var haPasswords = map[string]string{
	"homeassistant":  "ha-demo-otter-41",
	"zigbee2mqtt":    "z2m-demo-heron-72",
	"livingroom":     "esp-demo-finch-13",
	"tasmota_1A2B3C": "tas-demo-lynx-58",
	"frigate":        "frigate-demo-moth-90",
	"zwave":          "zwave-demo-newt-37",
	"alice":          "alice-demo-pike-15",
	"bob":            "bob-demo-vole-82",
}

// A retained discovery the house leaves (the script deletes the light's).
const haSensorConfig = "homeassistant/sensor/livingroom/temperature/config"

func testHomeAssistant(t *testing.T, p *containertest.Podman, tag string) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import paho.mqtt.client").Run(); err != nil {
		testenv.Missing(t, "python3-paho-mqtt", "apt-get install python3-paho-mqtt")
	}
	start := time.Now()
	dir := t.TempDir()
	// Copies of the sample's files, readable by Moat's uid only (as a
	// user is told to make them); the compose file mounts them.
	binds := map[string]string{}
	for target, src := range map[string]string{
		"/mosquitto/config/mosquitto.conf": "../sample/homeassistant/moat.conf",
		"/mosquitto/config/passwd":         "../sample/homeassistant/passwd",
		"/mosquitto/config/aclfile":        "../sample/homeassistant/aclfile",
	} {
		b := readFile(t, src)
		mode := uint32(0o600)
		if strings.HasSuffix(src, ".conf") {
			mode = 0o644
		}
		binds[target] = ownedFile(t, dir+"/"+target[strings.LastIndexByte(target, '/')+1:], b, fileMode(mode))
	}
	s := containertest.LoadStack(p, "homeassistant", containertest.Overrides{Image: tag, Binds: binds})
	// Home Assistant itself (host networking, an image not available
	// here) is played by the paho imitation on the host.
	s.Up("moat")
	name := s.Container("moat")
	addr := p.HostPort(name, "1883")
	waitFor(t, 60*time.Second, "moat healthy", func() string {
		if out, err := p.Try(time.Minute, "healthcheck", "run", name); err != nil {
			return out + " " + err.Error() + "; errors: " + errorLines(p.Logs(name), 4)
		}
		return ""
	})
	host, port, _ := strings.Cut(addr, ":")
	portN, _ := strconv.Atoi(port)
	in, err := json.Marshal(map[string]any{"host": host, "port": portN, "passwords": haPasswords})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "../internal/e2e/testdata/homeassistant_house.py")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("house script: %v\n%s\n%s", err, out, lastLines(stderr.String(), 20))
	}
	var r map[string]any
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("house script output: %v\n%s", err, out)
	}
	if e, _ := r["error"].(string); e != "" {
		t.Fatalf("house script failed:\n%s", e)
	}
	t.Run("home assistant starts", func(t *testing.T) {
		for _, key := range []string{"ha", "ha_restarted"} {
			ha, _ := r[key].(map[string]any)
			if ha["connack"] != float64(0) {
				t.Errorf("%s: CONNACK %v", key, ha["connack"])
			}
			retained, _ := ha["retained"].(map[string]any)
			if len(retained) < 12 {
				t.Errorf("%s: saw %d retained messages at start, want the house's 12: %v", key, len(retained), retained)
			}
		}
	})
	t.Run("commands reach devices once", func(t *testing.T) {
		cmds, _ := r["commands"].(map[string]any)
		for _, topic := range []string{"zigbee2mqtt/lamp/set", "livingroom/switch/relay/command", "cmnd/tasmota_1A2B3C/POWER", "frigate/front/detect/set"} {
			if cmds[topic] != float64(1) {
				t.Errorf("command %s delivered %v times, want 1", topic, cmds[topic])
			}
		}
	})
	t.Run("forgeries refused", func(t *testing.T) {
		d, _ := r["denials"].(map[string]any)
		for _, k := range []string{"ha_forgery_reached_zigbee2mqtt", "z2m_forgery_reached_zwave", "esphome_cross_node_reached_ha",
			"alice_forgery_reached_ha", "bob_command_reached_zigbee2mqtt"} {
			if d[k] != false {
				t.Errorf("%s = %v, want false", k, d[k])
			}
		}
	})
	t.Run("discovery survives a restart", func(t *testing.T) {
		p := p.For(t)
		p.Must(2*time.Minute, "restart", name)
		addr := p.HostPort(name, "1883")
		var c *mqtttest.Client
		waitFor(t, 60*time.Second, "moat after restart", func() string {
			cl, connack, err := mqtttest.Dial(addr, mqtttest.Options{ClientID: "ha-check", Username: "homeassistant", Password: haPasswords["homeassistant"], AutoAck: true})
			if err != nil {
				return err.Error()
			}
			if connack.ReasonCode != 0 {
				cl.Close()
				return "CONNACK " + strconv.Itoa(int(connack.ReasonCode))
			}
			c = cl
			return ""
		})
		defer c.Close()
		c.MustSubscribe(t, 1, haSensorConfig)
		if !c.WaitTopic(haSensorConfig) {
			t.Fatalf("retained discovery %s lost across podman restart", haSensorConfig)
		}
	})
	t.Logf("deploy/homeassistant checks took %v", time.Since(start).Round(time.Second))
}
