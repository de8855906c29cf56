package broker_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/mqtttest"
)

// hostileConf: the limits the hostile-input suite runs against, with an
// unencrypted store so that "nothing stored is lost" can be checked.
const hostileConf = `max_packet_size 4096
connect_timeout 1
max_connections_per_ip 50
persistence true
persistence_location store
persistence_encryption off
`

// rawConn dials from a loopback address and, when connect is set, sends
// a valid CONNECT as alice and reads the CONNACK.
func rawConn(t *testing.T, addr, local string, v byte, connect bool) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: waitLong}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	if !connect {
		return conn
	}
	o := as(v, "alice", fmt.Sprintf("hostile-%d", time.Now().UnixNano()))
	o.keepalive = 30
	b, err := mqtttest.Encode(mqtttest.ConnectPacket(o.options()), v)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(b)
	conn.SetReadDeadline(time.Now().Add(waitLong))
	// The broker sends nothing more until spoken to: the reader's buffer
	// takes nothing from the raw reads that follow.
	ack, err := mqtttest.ReadPacket(bufio.NewReaderSize(conn, 16), v)
	if err != nil || ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("no CONNACK: %+v %v", ack.FixedHeader, err)
	}
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK refused: 0x%02x", ack.ReasonCode)
	}
	return conn
}

// closedWithin reports whether the broker closes conn within d, draining
// whatever it sends first.
func closedWithin(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

func TestHostileInputs(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: hostileConf})
	watcher := connect(t, tb.addr, as(5, "alice", "watcher"))
	watcher.mustSubscribe("alice/#")
	pub := connect(t, tb.addr, as(4, "alice", "good-publisher"))
	if a := pub.publish("alice/keep", "stored", 1, true); a.code != 0 {
		t.Fatalf("retained publish: 0x%02x", a.code)
	}
	n := 0
	// probe proves a well-behaved client is still served.
	probe := func(after string) {
		t.Helper()
		n++
		topic := fmt.Sprintf("alice/probe/%d", n)
		if a := pub.publish(topic, "ok", 1, false); a.code != 0 {
			t.Fatalf("after %s: publish 0x%02x", after, a.code)
		}
		if !watcher.waitTopic(topic) {
			t.Fatalf("after %s: the watcher did not receive %s", after, topic)
		}
	}
	probe("start")
	goroutines := runtime.NumGoroutine()

	// Each raw input sent after a valid CONNECT; the broker must close
	// the connection.
	attacks := []struct {
		name string
		v    byte
		raw  []byte
	}{
		{"wildcard in publish topic", 4, []byte{0x30, 7, 0, 5, 'a', 'l', '/', '+', 'x'}},
		{"hash in publish topic", 5, []byte{0x30, 6, 0, 3, 'a', '/', '#', 0}},
		{"invalid UTF-8 topic", 4, []byte{0x30, 6, 0, 4, 'a', 0xff, 0xfe, 'b'}},
		{"QoS 3", 4, []byte{0x36, 8, 0, 3, 'a', '/', 'b', 0, 1, 'x'}},
		{"reserved flags on SUBSCRIBE", 4, []byte{0x80, 8, 0, 1, 0, 3, 'a', '/', 'b', 0}},
		{"second CONNECT", 4, []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 0}},
		{"remaining length overflow", 4, []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"oversized packet", 4, append([]byte{0x30, 0x80, 0x40, 0, 1, 'a'}, make([]byte, 8189)...)},
		{"truncated MQTT 5 SUBSCRIBE (mochi #501)", 5, []byte{0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x04, 'a', 'l', 'i', 'c'}},
		{"truncated publish then close", 4, []byte{0x30, 20, 0, 9, 'a'}},
	}
	for _, a := range attacks {
		conn := rawConn(t, tb.addr, "127.0.0.5", a.v, true)
		conn.SetWriteDeadline(time.Now().Add(waitLong))
		conn.Write(a.raw)
		if a.name == "truncated publish then close" {
			conn.(*net.TCPConn).CloseWrite()
		}
		if !closedWithin(conn, waitLong) {
			t.Errorf("%s: the connection stayed open", a.name)
		}
		probe(a.name)
	}

	// Slowloris: nothing at all, or one byte a second, is cut after
	// connect_timeout (1 s).
	idle := rawConn(t, tb.addr, "127.0.0.6", 4, false)
	drip := rawConn(t, tb.addr, "127.0.0.6", 4, false)
	start := time.Now()
	go func() {
		for _, b := range []byte{0x10, 40, 0, 4, 'M', 'Q', 'T', 'T'} {
			if _, err := drip.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(time.Second)
		}
	}()
	if !closedWithin(idle, 15*time.Second) || !closedWithin(drip, 15*time.Second) {
		t.Fatal("slowloris connections were not cut")
	}
	t.Logf("slowloris cut after %s", time.Since(start).Round(100*time.Millisecond))
	probe("slowloris")

	// 2000 connections from one address against max_connections_per_ip 50.
	var held []net.Conn
	refused := 0
	for i := 0; i < 2000; i++ {
		c, err := net.DialTimeout("tcp", tb.addr, waitLong)
		if err != nil {
			refused++
			continue
		}
		held = append(held, c)
	}
	open := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				open++
			}
		}
	}
	if open > 50 {
		t.Errorf("%d connections from one address stayed open, cap 50", open)
	}
	t.Logf("2000 connections from one address: %d held open, the rest closed or refused", open)
	other := connect(t, tb.addr, opts{v: 4, id: "other-ip", user: "alice", hasUser: true, pass: passwords["alice"], hasPass: true, keepalive: 30, local: "127.0.0.7"})
	other.disconnect()
	for _, c := range held {
		c.Close()
	}
	probe("2000 connections")

	// 1000 wrong passwords: bans answer without hash work, and alice still
	// logs in from her own address.
	banned := 0
	for i := 0; i < 1000; i++ {
		c, ack := dial(t, tb.addr, opts{v: 4, id: fmt.Sprintf("guess%d", i), user: "alice", hasUser: true, pass: fmt.Sprint("guess", i), hasPass: true, keepalive: 30, local: "127.0.0.8"})
		if ack.ReasonCode == 3 {
			banned++
		}
		c.drop()
	}
	if banned < 900 {
		t.Errorf("only %d of 1000 guesses were answered by a ban", banned)
	}
	probe("1000 wrong passwords")
	fresh := connect(t, tb.addr, as(5, "alice", "after-guesses"))
	fresh.disconnect()

	// Goroutines return to about where they were: nothing leaked per
	// connection.
	deadline := time.Now().Add(waitLong)
	for runtime.NumGoroutine() > goroutines+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > goroutines+20 {
		t.Errorf("goroutines %d, were %d before the attacks", g, goroutines)
	}

	// Nothing stored was lost.
	check := connect(t, tb.addr, as(4, "alice", "checker"))
	check.mustSubscribe("alice/keep")
	if m, ok := check.message("alice/keep"); !ok && !check.waitTopic("alice/keep") || ok && string(m.Payload) != "stored" {
		t.Fatal("the retained message was lost")
	}
}
