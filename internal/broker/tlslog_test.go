package broker_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/logging"
)

// A failed TLS handshake is logged at the default level with the client's
// address and the reason; 200 at once do not flood the log, and a good
// client is still served.
func TestFailedTLSHandshakeIsLogged(t *testing.T) {
	dir := t.TempDir()
	crt, key := writeCertFiles(t, dir, "server")
	conf := fmt.Sprintf("listener 0 127.0.0.1\ncertfile %s\nkeyfile %s\nlistener 0 127.0.0.1\nprotocol websockets\ncertfile %[1]s\nkeyfile %[2]s\nallow_anonymous true\nadmin_listener off\n", crt, key)
	path := filepath.Join(dir, "moat.conf")
	writeFile(t, path, conf)
	b, logs := startFromFile(t, path, nil, logging.Options{}, false) // the default level
	addr := b.Addr("mqtts:127.0.0.1:0").String()

	// Plain MQTT to the TLS port.
	c, err := net.DialTimeout("tcp", addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().String()
	_, _ = c.Write([]byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0})
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	_, _ = c.Read(make([]byte, 16))
	c.Close()
	lines := waitLog(t, logs, 0, "TLS handshake failed", "remote="+local)
	if !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], "reason=") {
		t.Errorf("line: %s", lines[0])
	}

	// A client that offers only TLS 1.1.
	if c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Error("TLS 1.1 handshake succeeded")
	}
	waitLog(t, logs, 0, "TLS handshake failed", "unsupported versions")

	before := len(logs.Lines("TLS handshake failed"))
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, waitLong)
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			_ = c.SetReadDeadline(time.Now().Add(waitLong))
			_, _ = c.Read(make([]byte, 16))
			c.Close()
		}()
	}
	wg.Wait()
	if n := len(logs.Lines("TLS handshake failed")) - before; n > 20 {
		t.Errorf("200 failed handshakes made %d log lines", n)
	}
	// WSS: the handshake runs in the WebSocket listener's HTTP server.
	wss := b.Addr("wss:127.0.0.1:0").String()
	c, err = net.DialTimeout("tcp", wss, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	wssLocal := c.LocalAddr().String()
	_, _ = c.Write([]byte("GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(waitLong))
	_, _ = c.Read(make([]byte, 16))
	c.Close()
	waitLog(t, logs, 0, "TLS handshake failed", "listener=wss:127.0.0.1:0", "remote="+wssLocal)

	good, err := tlsDial(addr)
	if err != nil {
		t.Fatalf("a good client after the flood: %v", err)
	}
	good.Close()
}
