package broker_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/moat-mqtt/moat/internal/admin"
	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
)

// Default ports of services a broker commonly runs beside.
var commonPorts = map[int]string{
	80: "http", 443: "https", 1880: "Node-RED", 1883: "MQTT", 3000: "Grafana",
	5000: "Frigate", 6052: "ESPHome", 8080: "zigbee2mqtt, cAdvisor", 8083: "MQTT over WSS",
	8086: "InfluxDB", 8091: "Z-Wave JS UI", 8123: "Home Assistant", 8883: "MQTT over TLS",
	9000: "Portainer", 9001: "MQTT over WebSocket", 9090: "Prometheus",
}

func TestDefaultAdminPortAvoidsCommonServices(t *testing.T) {
	def := config.Default().Admin.Listener
	if def != admin.DefaultAddr {
		t.Errorf("config default %s, admin package default %s", def, admin.DefaultAddr)
	}
	_, p, err := net.SplitHostPort(def)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	if who, ok := commonPorts[port]; ok {
		t.Errorf("default admin port %d is %s's", port, who)
	}
	if port >= 9091 && port <= 9999 {
		t.Errorf("default admin port %d is in the Prometheus exporters' range", port)
	}
}

// When the admin port is taken, the error names the directive that moves it.
func TestAdminBindFailureNamesDirective(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, line := range []string{"admin_listener " + taken.Addr().String() + "\n", ""} {
		conf := "listener 0 127.0.0.1\nallow_anonymous true\n" + line
		cfg, err := config.Parse("moat.conf", []byte(conf), nil)
		if err != nil {
			t.Fatal(err)
		}
		if line == "" {
			cfg.Admin.Listener = taken.Addr().String() // the default, moved to the taken port
		}
		b, err := broker.New(broker.Options{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		err = b.Start()
		_ = b.Close(context.Background())
		if err == nil {
			t.Fatal("admin listener bound a taken port")
		}
		for _, want := range []string{"admin_listener " + taken.Addr().String(), "admin_listener off", "set admin_listener ADDR:PORT"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		if line != "" && !strings.Contains(err.Error(), "moat.conf:3") {
			t.Errorf("error %q does not name moat.conf:3", err)
		}
	}
}
