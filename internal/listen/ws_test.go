package listen

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

const upgradeHeaders = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"

// slowRequest is what one slow client sends: head at once, then trickle
// one byte at a time.
type slowRequest struct {
	name    string
	head    string
	trickle string
	raw     bool // sent without TLS on wss: a TLS handshake trickling in
}

var slowRequests = []slowRequest{
	{"headers slowly", "", upgradeHeaders + "X-Pad: " + strings.Repeat("a", 200) + "\r\n\r\n", false},
	{"body slowly", "POST /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n", strings.Repeat("b", 1000), false},
	{"chunked body slowly", "POST /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n", "3e8\r\n" + strings.Repeat("c", 1000), false},
	{"upgrade with a slow body", upgradeHeaders + "Content-Length: 1000\r\n\r\n", strings.Repeat("d", 1000), false},
	{"handshake slowly", "", "\x16\x03\x01\x02\x00" + strings.Repeat("\x01", 512), true},
}

// runSlow sends r on c, a byte every gap, until the server closes c; it
// reports whether the server cut it before within.
func runSlow(c net.Conn, r slowRequest, gap, within time.Duration) error {
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		_, _ = io.Copy(io.Discard, c) // until the server closes
	}()
	if _, err := io.WriteString(c, r.head); err != nil {
		return nil // already cut
	}
	stop := time.After(within)
	for i := 0; i < len(r.trickle); i++ {
		select {
		case <-closed:
			return nil
		case <-stop:
			return fmt.Errorf("%s: still open after %v (%d bytes sent)", r.name, within, i)
		case <-time.After(gap):
		}
		if _, err := c.Write([]byte{r.trickle[i]}); err != nil {
			break
		}
	}
	select {
	case <-closed:
		return nil
	case <-stop:
		return fmt.Errorf("%s: still open after %v (all sent)", r.name, within)
	}
}

// goroutinesBack waits until the goroutine count is back to base.
func goroutinesBack(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(ioDeadline)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the attack:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWebSocketSlowRequests: 60 clients send their HTTP request (headers,
// or a body) a byte at a time to a ws/wss listener capped at 50. Each is cut
// once connect_timeout has passed since its accept (before: a slow body was
// never cut, and fifty of them filled the listener); a well-behaved
// WebSocket MQTT client connects and exchanges a message meanwhile, and
// the goroutines return to their count before the attack.
func TestWebSocketSlowRequests(t *testing.T) {
	const (
		connectTimeout = time.Second
		attackers      = 60
		gap            = 100 * time.Millisecond
	)
	cert, pool := selfSigned(t)
	for _, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			o := Options{WebSocket: true, WebSocketPath: "/mqtt", ConnectTimeout: connectTimeout, MaxConnections: attackers - 10}
			var clientTLS *tls.Config
			if scheme == "wss" {
				o.TLS = hardened(t, cert)
				clientTLS = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
			}
			srv, l := newBroker(t, o)
			time.Sleep(50 * time.Millisecond) // let the listener's goroutines start
			base := runtime.NumGoroutine()

			errs := make(chan error, attackers)
			start := time.Now()
			var wg sync.WaitGroup
			for i := range attackers {
				r := slowRequests[i%len(slowRequests)]
				wg.Go(func() {
					c, err := net.DialTimeout("tcp", l.Address(), ioDeadline)
					if err != nil {
						errs <- err
						return
					}
					defer c.Close()
					if clientTLS != nil && !r.raw {
						tc := tls.Client(c, clientTLS)
						if err := tc.Handshake(); err != nil {
							return // refused over the cap, or cut
						}
						c = tc
					}
					// Sending everything would take far longer than within.
					errs <- runSlow(c, r, gap, connectTimeout+5*time.Second)
				})
			}

			// Meanwhile a well-behaved client gets in and is served.
			deadline := time.Now().Add(ioDeadline)
			var mc net.Conn
			for {
				c, resp, err := dialWS(t, wsURL(scheme, l, "/mqtt"), clientTLS, nil)
				if err == nil {
					mc = c
					break
				}
				if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("well-behaved client: status %d: %v", resp.StatusCode, err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("well-behaved client never got in: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			good := newClient(t, mc, 4)
			good.connect("good")
			roundTrip(t, good, good, "good/topic")

			wg.Wait()
			t.Logf("%d slow requests (connect_timeout %v) all cut within %v", attackers, connectTimeout, time.Since(start).Round(10*time.Millisecond))
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			good.publish("good/after", "x")
			if err := good.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}); err != nil {
				t.Fatal(err)
			}
			good.expect(packets.Pingresp)
			_ = good.Close()
			eventually(t, "the good client's session to end", func() bool { return atomic.LoadInt64(&srv.Info.ClientsConnected) == 0 })
			goroutinesBack(t, base)
			if n, _ := l.Stats(); n != 0 {
				t.Errorf("%d connections still counted", n)
			}
		})
	}
}

// TestWebSocketUpgradeBody: an upgrade GET that announces a body
// (Content-Length > 0 or chunked) is answered 400 and closed at once; a
// GET with Content-Length: 0 is upgraded.
func TestWebSocketUpgradeBody(t *testing.T) {
	_, l := newBroker(t, Options{WebSocket: true, WebSocketPath: "/mqtt", ConnectTimeout: 5 * time.Second})
	for _, tc := range []struct {
		name   string
		extra  string
		status int
	}{
		{"content-length", "Content-Length: 5\r\n", 400},
		{"huge content-length", "Content-Length: 1099511627776\r\n", 400},
		{"chunked", "Transfer-Encoding: chunked\r\n", 400},
		{"content-length 0", "Content-Length: 0\r\n", 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialTCP(t, "", l.Address())
			_ = c.SetDeadline(time.Now().Add(ioDeadline))
			if _, err := io.WriteString(c, upgradeHeaders+tc.extra+"\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == 400 {
				// Closed at once, without waiting for the announced body.
				_ = c.SetReadDeadline(time.Now().Add(ioDeadline))
				if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, io.ErrNoProgress) {
					t.Fatalf("connection still open: %v", err)
				} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatal("connection still open")
				}
			}
		})
	}
}

// TestWebSocketDeadlineFromAccept: connect_timeout runs from the accept
// through the TLS handshake, the upgrade request and the CONNECT. Each
// phase below stays within connect_timeout on its own, but the whole ends
// later, so the connection is cut (before: each phase had its own
// connect_timeout).
func TestWebSocketDeadlineFromAccept(t *testing.T) {
	const connectTimeout = time.Second
	const phase = connectTimeout * 6 / 10
	cert, pool := selfSigned(t)
	for _, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			o := Options{WebSocket: true, WebSocketPath: "/mqtt", ConnectTimeout: connectTimeout}
			if scheme == "wss" {
				o.TLS = hardened(t, cert)
			}
			_, l := newBroker(t, o)
			c := dialTCP(t, "", l.Address())
			time.Sleep(phase)
			if scheme == "wss" {
				tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				if err := tc.Handshake(); err != nil {
					t.Fatalf("handshake within connect_timeout: %v", err)
				}
				c = tc
				time.Sleep(phase)
			}
			_ = c.SetDeadline(time.Now().Add(ioDeadline))
			if _, err := io.WriteString(c, upgradeHeaders+"\r\n"); err != nil {
				return // cut already
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if scheme == "wss" {
				if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
					t.Fatal("upgrade request completed after connect_timeout was accepted")
				}
				return
			}
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade within connect_timeout: %v %v", resp, err)
			}
			time.Sleep(phase)
			// A masked binary frame carrying CONNECT, after connect_timeout.
			connect := connectBytes(t, "late", 4)
			frame := append([]byte{0x82, 0x80 | byte(len(connect)), 0, 0, 0, 0}, connect...)
			if _, err := c.Write(frame); err != nil {
				return // cut
			}
			_ = c.SetReadDeadline(time.Now().Add(ioDeadline))
			if b, _ := io.ReadAll(br); len(b) > 2 && b[2] == 0x20 {
				t.Fatalf("CONNECT after connect_timeout answered with a CONNACK")
			}
		})
	}
}

// TestWebSocketSessionOutlivesConnectTimeout: a client that upgrades and
// sends CONNECT at once is not held to the connect deadline afterwards:
// it reads and writes long after it.
func TestWebSocketSessionOutlivesConnectTimeout(t *testing.T) {
	const connectTimeout = 300 * time.Millisecond
	cert, pool := selfSigned(t)
	for _, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			o := Options{WebSocket: true, ConnectTimeout: connectTimeout}
			var clientTLS *tls.Config
			if scheme == "wss" {
				o.TLS = hardened(t, cert)
				clientTLS = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
			}
			_, l := newBroker(t, o)
			c, _, err := dialWS(t, wsURL(scheme, l, "/"), clientTLS, nil)
			if err != nil {
				t.Fatal(err)
			}
			cl := newClient(t, c, 4)
			cl.connect("patient")
			time.Sleep(3 * connectTimeout) // past the connect deadline: mochi's keepalive rules now
			roundTrip(t, cl, cl, "still/here")
		})
	}
}
