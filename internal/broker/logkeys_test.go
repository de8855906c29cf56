package broker_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/logging"
)

// duplicateKeys returns the keys that occur more than once at the top level
// of one JSON log line.
func duplicateKeys(line []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	if _, err := dec.Token(); err != nil { // {
		return nil, err
	}
	seen := map[string]bool{}
	var dups []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, _ := tok.(string)
		if seen[k] {
			dups = append(dups, k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil, err
		}
	}
	return dups, nil
}

// Every part logs through the logger serve builds (JSON, as the shipped
// configurations use): no line may carry a key twice, which log pipelines
// resolve differently (first wins, last wins, or the line is dropped).
func TestLogLinesNeverRepeatAKey(t *testing.T) {
	dir := t.TempDir()
	crt, key := writeCertFiles(t, dir, "server")
	conf := fmt.Sprintf(`listener 0 127.0.0.1
listener 0 127.0.0.1
protocol websockets
listener 0 127.0.0.1
certfile %s
keyfile %s
listener %d 127.0.0.1
tls acme
allow_anonymous true
admin_listener 127.0.0.1:0
acme_domain mqtt.example.com
acme_directory https://127.0.0.1:1/directory
acme_state_dir %s
log_format json
log_type all
`, crt, key, freePort(t), filepath.Join(dir, "acme"))
	path := filepath.Join(dir, "moat.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(k string) string {
		return map[string]string{"CLOUDFLARE_DNS_API_TOKEN": "test-token-not-real"}[k]
	}
	lo := logging.Options{Format: "json", Types: map[string]bool{"all": true}}
	b, logs := startFromFile(t, path, env, lo, false)
	// As serve wires lego's process-wide logger.
	lo.Stderr = logs
	lg, err := logging.New(lo)
	if err != nil {
		t.Fatal(err)
	}
	certs.LegoLogger(lg.Logger).Printf("[INFO] lego line")
	addr := b.Addr("mqtt:127.0.0.1:0").String()
	connect(t, addr, anon(5, "keys-ok")).disconnect()
	// An invalid first packet and a failed TLS handshake.
	if c, err := net.Dial("tcp", addr); err == nil {
		_, _ = c.Write([]byte{0x30, 0x02, 0, 0})
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	if a := b.Addr("mqtts:127.0.0.1:0"); a != nil {
		if c, err := tls.Dial("tcp", a.String(), &tls.Config{InsecureSkipVerify: false}); err == nil {
			c.Close()
		}
	}
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	// The ACME manager fails against the unreachable directory and says so.
	deadline := time.Now().Add(waitLong)
	for !strings.Contains(logs.String(), `"component":"acme"`) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	n := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if line == "" {
			continue
		}
		n++
		dups, err := duplicateKeys([]byte(line))
		if err != nil {
			t.Errorf("not JSON: %v: %s", err, line)
			continue
		}
		if len(dups) > 0 {
			t.Errorf("key %v repeated: %s", dups, line)
		}
	}
	for _, part := range []string{`"component":"acme"`, `"component":"lego"`, `"listener":"mqtt:127.0.0.1:0"`} {
		if !strings.Contains(logs.String(), part) {
			t.Errorf("no line with %s; the test did not reach that part", part)
		}
	}
	t.Logf("%d lines checked", n)
}
