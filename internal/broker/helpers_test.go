package broker_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// Generous: the machine running the tests is shared and noisy.
const (
	waitLong  = 10 * time.Second
	waitQuiet = 300 * time.Millisecond
)

// listenerID is the id of the test listener ("listener 0 127.0.0.1").
const listenerID = "mqtt:127.0.0.1:0"

// Passwords of the users the tests create.
var passwords = map[string]string{
	"alice": "alice-pass",
	"bob":   "b0b:with$pecial #chars",
	"admin": "admin-pass",
}

// setup describes one broker under test.
type setup struct {
	users map[string]string // nil: passwords; empty map: no password_file
	acl   string            // "" : no acl_file
	// conf is appended to the generated configuration.
	conf string
	// anonymous sets allow_anonymous.
	anonymous bool
}

// testBroker is a running broker and the files it was built from.
type testBroker struct {
	t      testing.TB
	dir    string
	conf   string
	passwd string
	acl    string
	b      *broker.Broker
	addr   string
	logs   *logBuffer
}

// syncBuffer-backed slog output, safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines returns the log lines containing every one of the words.
func (l *logBuffer) lines(words ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// writePasswd writes a password file with cheap hashes.
func writePasswd(t testing.TB, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	slices.Sort(names)
	for _, u := range names {
		h, err := passwd.Hash([]byte(users[u]), "sha512-pbkdf2", 1000)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	writeFile(t, path, b.String())
}

// writeFile replaces a file atomically, as an editor or a deploy would.
func writeFile(t testing.TB, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// writeSetup writes moat.conf, passwd and acl into dir and returns the
// configuration path.
func writeSetup(t testing.TB, dir string, s setup) (conf, pw, aclPath string) {
	t.Helper()
	var c strings.Builder
	c.WriteString("listener 0 127.0.0.1\nadmin_listener off\n")
	fmt.Fprintf(&c, "allow_anonymous %v\n", s.anonymous)
	users := s.users
	if users == nil {
		users = passwords
	}
	if len(users) > 0 {
		pw = filepath.Join(dir, "passwd")
		writePasswd(t, pw, users)
		c.WriteString("password_file passwd\n")
	}
	if s.acl != "" {
		aclPath = filepath.Join(dir, "acl")
		writeFile(t, aclPath, s.acl)
		c.WriteString("acl_file acl\n")
	}
	c.WriteString(s.conf)
	conf = filepath.Join(dir, "moat.conf")
	writeFile(t, conf, c.String())
	return conf, pw, aclPath
}

// startBroker starts a broker for s on 127.0.0.1, port 0; it is closed
// when the test ends.
func startBroker(t testing.TB, s setup) *testBroker {
	t.Helper()
	dir := t.TempDir()
	conf, pw, aclPath := writeSetup(t, dir, s)
	cfg, err := config.Load(conf, nil)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &logBuffer{}
	// Moat's own logging pipeline (with its redaction), at debug level.
	lg, err := logging.New(logging.Options{Types: map[string]bool{"all": true}, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Options{Config: cfg, Logger: lg.Logger})
	if err != nil {
		t.Fatalf("broker.New: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		_ = b.Close(ctx)
	})
	a := b.Addr(listenerID)
	if a == nil {
		t.Fatalf("no listener %s", listenerID)
	}
	return &testBroker{t: t, dir: dir, conf: conf, passwd: pw, acl: aclPath, b: b, addr: a.String(), logs: logs}
}

// ---- a compact raw MQTT client built on mochi's packet codecs ----

// opts describes a CONNECT.
type opts struct {
	v         byte // 4 (3.1.1) or 5
	id        string
	user      string
	hasUser   bool
	pass      string
	hasPass   bool
	persist   bool // clean session false (v5: session expiry 3600)
	keepalive uint16
	will      *packets.Packet // TopicName, Payload, FixedHeader.Qos/Retain
	local     string          // local IP to dial from
}

// as returns connect options for a user with its password.
func as(v byte, user, id string) opts {
	return opts{v: v, id: id, user: user, hasUser: true, pass: passwords[user], hasPass: true, keepalive: 60}
}

func anon(v byte, id string) opts { return opts{v: v, id: id, keepalive: 60} }

// client is one raw MQTT connection.
type client struct {
	t    testing.TB
	name string
	v    byte
	conn net.Conn
	wmu  sync.Mutex

	mu     sync.Mutex
	cond   *sync.Cond
	msgs   []packets.Packet // received PUBLISH packets, in order
	acks   []packets.Packet // other packets for the test goroutine
	closed error            // set when the read loop ends

	nextID uint16
}

// dial connects and returns the client and its CONNACK; on a refused
// CONNECT the connection is still returned (closed by the broker).
func dial(t testing.TB, addr string, o opts) (*client, packets.Packet) {
	t.Helper()
	d := net.Dialer{Timeout: waitLong}
	if o.local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.local)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &client{t: t, name: o.id, v: o.v, conn: conn}
	c.cond = sync.NewCond(&c.mu)
	t.Cleanup(func() { _ = conn.Close() })

	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: o.v,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: o.id,
			Clean:            !o.persist,
			Keepalive:        o.keepalive,
			UsernameFlag:     o.hasUser,
			Username:         []byte(o.user),
			PasswordFlag:     o.hasPass,
			Password:         []byte(o.pass),
		},
	}
	if o.persist && o.v == 5 {
		pk.Properties.SessionExpiryInterval = 3600
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	if o.will != nil {
		pk.Connect.WillFlag = true
		pk.Connect.WillTopic = o.will.TopicName
		pk.Connect.WillPayload = o.will.Payload
		pk.Connect.WillQos = o.will.FixedHeader.Qos
		pk.Connect.WillRetain = o.will.FixedHeader.Retain
	}
	c.write(pk)
	go c.readLoop()
	ack, ok := c.waitPacket(packets.Connack, 0)
	if !ok {
		t.Fatalf("%s: no CONNACK: %v", o.id, c.err())
	}
	return c, ack
}

// connect dials and requires a successful CONNACK.
func connect(t testing.TB, addr string, o opts) *client {
	t.Helper()
	c, ack := dial(t, addr, o)
	if ack.ReasonCode != 0 {
		t.Fatalf("%s (user %q): CONNACK 0x%02x, want 0", o.id, o.user, ack.ReasonCode)
	}
	return c
}

func (c *client) write(pk packets.Packet) {
	c.t.Helper()
	var buf bytes.Buffer
	var err error
	pk.ProtocolVersion = c.v
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("cannot encode type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Errorf("%s: encode: %v", c.name, err)
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitLong))
	// A write error shows up as the read loop ending.
	_, _ = c.conn.Write(buf.Bytes())
}

func (c *client) readLoop() {
	r := bufio.NewReader(c.conn)
	var err error
	for err == nil {
		var pk packets.Packet
		pk, err = c.readPacket(r)
		if err != nil {
			break
		}
		switch pk.FixedHeader.Type {
		case packets.Publish:
			switch pk.FixedHeader.Qos {
			case 1:
				c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			case 2:
				c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, pk)
			c.mu.Unlock()
		case packets.Pubrel:
			c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: pk.PacketID})
		default:
			c.mu.Lock()
			c.acks = append(c.acks, pk)
			c.mu.Unlock()
		}
		c.cond.Broadcast()
	}
	c.mu.Lock()
	c.closed = err
	c.mu.Unlock()
	c.cond.Broadcast()
}

func (c *client) readPacket(r *bufio.Reader) (packets.Packet, error) {
	pk := packets.Packet{ProtocolVersion: c.v}
	hb, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubrel:
		err = pk.PubrelDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

func (c *client) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// waitUntil waits, with a deadline, until cond (called with c.mu held) is
// true; it reports false on the deadline.
func (c *client) waitUntil(d time.Duration, cond func() bool) bool {
	timer := time.AfterFunc(d, c.cond.Broadcast)
	defer timer.Stop()
	deadline := time.Now().Add(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	for !cond() {
		if !time.Now().Before(deadline) {
			return false
		}
		c.cond.Wait()
	}
	return true
}

// waitPacket takes the first received packet of type typ (and packet id
// id, when non-zero).
func (c *client) waitPacket(typ byte, id uint16) (packets.Packet, bool) {
	var got packets.Packet
	ok := c.waitUntil(waitLong, func() bool {
		for i, pk := range c.acks {
			if pk.FixedHeader.Type == typ && (id == 0 || pk.PacketID == id) {
				got = pk
				c.acks = append(c.acks[:i], c.acks[i+1:]...)
				return true
			}
		}
		return c.closed != nil
	})
	return got, ok && got.FixedHeader.Type == typ
}

// id numbers client packets from 40000: mochi keeps inbound and outbound
// packet ids in one inflight map, so a client id equal to one the broker
// chose for a delivery in flight is "in use" (SUBACK 0x91, even under
// 3.1.1). Real clients hit that by chance; the tests keep clear of it.
func (c *client) id() uint16 {
	if c.nextID < 40000 {
		c.nextID = 40000
	}
	c.nextID++
	return c.nextID
}

// subscribe subscribes to each filter at QoS 1 in one packet and returns
// the SUBACK codes.
func (c *client) subscribe(filters ...string) []byte {
	c.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: c.id()}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	c.write(pk)
	ack, ok := c.waitPacket(packets.Suback, pk.PacketID)
	if !ok {
		c.t.Fatalf("%s: no SUBACK for %v: %v", c.name, filters, c.err())
	}
	return ack.ReasonCodes
}

// mustSubscribe subscribes and requires every filter granted.
func (c *client) mustSubscribe(filters ...string) {
	c.t.Helper()
	for i, code := range c.subscribe(filters...) {
		if code >= 0x80 {
			c.t.Fatalf("%s: SUBACK for %s = 0x%02x, want granted", c.name, filters[i], code)
		}
	}
}

// ack is the broker's answer to a publish: the ack packet types seen and
// the reason code of the first (PUBACK or PUBREC).
type ack struct {
	types []byte
	code  byte
}

const noAck = 0xff

// publish sends a message and completes its QoS flow. QoS 0 returns
// code noAck.
func (c *client) publish(topic, payload string, qos byte, retain bool) ack {
	c.t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     []byte(payload),
	}
	if qos > 0 {
		pk.PacketID = c.id()
	}
	c.write(pk)
	switch qos {
	case 1:
		a, ok := c.waitPacket(packets.Puback, pk.PacketID)
		if !ok {
			c.t.Fatalf("%s: no PUBACK for %s: %v", c.name, topic, c.err())
		}
		return ack{types: []byte{packets.Puback}, code: a.ReasonCode}
	case 2:
		// mochi answers a v5 OnPublish error with a PUBACK even at QoS 2.
		var got packets.Packet
		ok := c.waitUntil(waitLong, func() bool {
			for i, a := range c.acks {
				if (a.FixedHeader.Type == packets.Pubrec || a.FixedHeader.Type == packets.Puback) && a.PacketID == pk.PacketID {
					got = a
					c.acks = append(c.acks[:i], c.acks[i+1:]...)
					return true
				}
			}
			return c.closed != nil
		})
		if !ok || got.FixedHeader.Type == 0 {
			c.t.Fatalf("%s: no PUBREC for %s: %v", c.name, topic, c.err())
		}
		res := ack{types: []byte{got.FixedHeader.Type}, code: got.ReasonCode}
		if got.FixedHeader.Type == packets.Pubrec && got.ReasonCode < 0x80 {
			c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID})
			if _, ok := c.waitPacket(packets.Pubcomp, pk.PacketID); !ok {
				c.t.Fatalf("%s: no PUBCOMP for %s: %v", c.name, topic, c.err())
			}
			res.types = append(res.types, packets.Pubcomp)
		}
		return res
	}
	return ack{code: noAck}
}

// ping round-trips a PINGREQ: everything the broker sent before it has
// been read once ping returns.
func (c *client) ping() {
	c.t.Helper()
	c.wmu.Lock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(waitLong))
	_, _ = c.conn.Write([]byte{packets.Pingreq << 4, 0})
	c.wmu.Unlock()
	if _, ok := c.waitPacket(packets.Pingresp, 0); !ok {
		c.t.Fatalf("%s: no PINGRESP: %v", c.name, c.err())
	}
}

// topics returns the topics received so far, in order.
func (c *client) topics() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.msgs))
	for _, m := range c.msgs {
		out = append(out, m.TopicName)
	}
	return out
}

// waitTopic waits until a message on topic has arrived.
func (c *client) waitTopic(topic string) bool {
	return c.waitUntil(waitLong, func() bool {
		for _, m := range c.msgs {
			if m.TopicName == topic {
				return true
			}
		}
		return c.closed != nil
	}) && slices.Contains(c.topics(), topic)
}

// message returns the first message received on topic.
func (c *client) message(topic string) (packets.Packet, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.msgs {
		if m.TopicName == topic {
			return m, true
		}
	}
	return packets.Packet{}, false
}

// waitClosed waits until the broker closed the connection.
func (c *client) waitClosed() bool {
	return c.waitUntil(waitLong, func() bool { return c.closed != nil })
}

// quiet reports whether the connection stays up and receives nothing new
// for a short while; used only to confirm an absence already implied by
// an ordered marker.
func (c *client) quietFor(d time.Duration) []string {
	n := len(c.topics())
	c.waitUntil(d, func() bool { return len(c.msgs) > n })
	return c.topics()[n:]
}

func (c *client) disconnect() {
	c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	_ = c.conn.Close()
}

// drop closes the socket without DISCONNECT (an abnormal disconnect).
func (c *client) drop() { _ = c.conn.Close() }

// sorted returns a sorted copy without duplicates.
func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// without drops marker topics.
func without(s []string, drop ...string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(x string) bool { return slices.Contains(drop, x) })
}
