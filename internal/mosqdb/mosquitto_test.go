package mosqdb

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/testenv"
)

// go test ./internal/mosqdb -run TestRealMosquitto -update rewrites the
// committed fixtures from the installed mosquitto.
var update = flag.Bool("update", false, "rewrite testdata/*.db from the installed mosquitto")

// binaryPayload holds every byte class a text path would mangle.
var binaryPayload = []byte{0x00, 0x01, 0xff, 0xfe, ' ', 'b', 'i', 'n', 0x00, 0x80, '\n', 0x7f}

// longExpiry keeps the fixture's expiring message valid for decades.
const longExpiry = 2000000000

// mosquittoScript is what WriteWithMosquitto publishes. A persistent
// session subscribed first adds client, subscription and queued-message
// chunks, which the parser must skip.
func mosquittoScript(dir string) [][]string {
	bin := filepath.Join(dir, "payload.bin")
	return [][]string{
		{"mosquitto_sub", "-c", "-i", "keeper", "-q", "1", "-t", "sensors/#", "-E"},
		{"mosquitto_pub", "-r", "-q", "0", "-t", "sensors/q0", "-m", "qos zero"},
		{"mosquitto_pub", "-r", "-q", "1", "-t", "sensors/q1", "-m", "qos one"},
		{"mosquitto_pub", "-r", "-q", "2", "-t", "sensors/q2", "-m", "qos two"},
		{"mosquitto_pub", "-V", "5", "-r", "-q", "1", "-t", "v5/props", "-m", `{"t":21.5}`,
			"-D", "publish", "content-type", "application/json",
			"-D", "publish", "user-property", "site", "lab",
			"-D", "publish", "user-property", "k 2", "v=2",
			"-D", "publish", "payload-format-indicator", "1",
			"-D", "publish", "response-topic", "v5/reply",
			"-D", "publish", "correlation-data", "abc123"},
		{"mosquitto_pub", "-V", "5", "-r", "-q", "1", "-t", "v5/expiring", "-m", "long-lived",
			"-D", "publish", "message-expiry-interval", strconv.Itoa(longExpiry)},
		{"mosquitto_pub", "-V", "5", "-r", "-q", "0", "-t", "v5/expired", "-m", "gone in a second",
			"-D", "publish", "message-expiry-interval", "1"},
		{"mosquitto_pub", "-r", "-q", "1", "-t", "bin/blob", "-f", bin},
		{"mosquitto_pub", "-r", "-q", "0", "-t", "deleted/topic", "-m", "x"},
		{"mosquitto_pub", "-r", "-q", "0", "-t", "deleted/topic", "-n"},
		{"mosquitto_pub", "-q", "1", "-t", "sensors/queued", "-m", "not retained"},
		{"sleep", "2100ms"}, // v5/expired expires; mosquitto still saves it
	}
}

// WriteWithMosquitto runs the installed mosquitto with persistence on,
// runs script (commands get -h/-p added), stops it so it saves, and returns
// the mosquitto.db it wrote.
func WriteWithMosquitto(t *testing.T, script func(dir string) [][]string) []byte {
	t.Helper()
	mosq := testenv.LookPath(t, "mosquitto", "apt-get install mosquitto")
	testenv.LookPath(t, "mosquitto_pub", "apt-get install mosquitto-clients")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "payload.bin"), binaryPayload, 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n", port, dir)
	if os.Getuid() == 0 {
		conf += "user root\n" // otherwise mosquitto drops to a user that cannot write dir
	}
	if err := os.WriteFile(filepath.Join(dir, "mosquitto.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(mosq, "-c", filepath.Join(dir, "mosquitto.conf"))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not listen on %s: %s", addr, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, args := range script(dir) {
		if args[0] == "sleep" {
			d, err := time.ParseDuration(args[1])
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(d)
			continue
		}
		full := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port)}, args[1:]...)
		if out, err := exec.Command(args[0], full...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mosquitto: %v: %s", err, log.String())
	}
	stopped = true
	data, err := os.ReadFile(filepath.Join(dir, "mosquitto.db"))
	if err != nil {
		t.Fatalf("mosquitto wrote no database: %v: %s", err, log.String())
	}
	return data
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
