package broker_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/moattest/brokertest"
	"github.com/moat-mqtt/moat/internal/mqtttest"
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
	// logFormat is log_format ("" : text).
	logFormat string
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

// logBuffer collects the broker's log lines.
type logBuffer = moattest.LogBuffer

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
	tb := startConfFormat(t, dir, conf, listenerID, s.logFormat)
	tb.passwd, tb.acl = pw, aclPath
	return tb
}

// startConf starts a broker from a configuration file already in dir
// (for layouts writeSetup cannot express). listener is the id whose
// address becomes tb.addr.
func startConf(t testing.TB, dir, conf, listener string) *testBroker {
	t.Helper()
	return startConfFormat(t, dir, conf, listener, "")
}

// startConfFormat is startConf logging in format ("" for text).
func startConfFormat(t testing.TB, dir, conf, listener, format string) *testBroker {
	t.Helper()
	r := brokertest.RunFile(t, conf, brokertest.Options{LogFormat: format})
	return &testBroker{t: t, dir: dir, conf: conf, b: r.Broker, addr: r.MustAddr(t, listener), logs: r.Logs}
}

// ---- raw MQTT clients (internal/mqtttest), bound to the test ----

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

// options are o for mqtttest: a well-behaved client that acknowledges
// what it receives.
func (o opts) options() mqtttest.Options {
	m := mqtttest.Options{
		Version: o.v, ClientID: o.id,
		Username: o.user, UsernameFlag: o.hasUser,
		Password: o.pass, PasswordFlag: o.hasPass,
		Persistent: o.persist, KeepAlive: o.keepalive,
		LocalIP: o.local, AutoAck: true, Timeout: waitLong,
	}
	if o.persist {
		m.SessionExpiry = 3600 // sent under MQTT 5 only
	}
	if w := o.will; w != nil {
		m.Will = &mqtttest.Will{Topic: w.TopicName, Payload: w.Payload, QoS: w.FixedHeader.Qos, Retain: w.FixedHeader.Retain}
	}
	return m
}

// client is one raw MQTT connection whose helpers fail t.
type client struct {
	*mqtttest.Client
	t testing.TB
}

// dial connects and returns the client and its CONNACK; on a refused
// CONNECT the connection is still returned (closed by the broker).
func dial(t testing.TB, addr string, o opts) (*client, packets.Packet) {
	t.Helper()
	c, ack, err := mqtttest.Dial(addr, o.options())
	if err != nil {
		t.Fatalf("%s: %v", o.id, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{Client: c, t: t}, ack
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

// write sends one packet; a write error shows up as the connection ending.
func (c *client) write(pk packets.Packet) {
	c.t.Helper()
	if b, err := mqtttest.Encode(pk, c.Version()); err != nil {
		c.t.Errorf("encode: %v", err)
	} else {
		_ = c.WriteBytes(b)
	}
}

// subscribe subscribes to each filter at QoS 1 in one packet and returns
// the SUBACK codes.
func (c *client) subscribe(filters ...string) []byte {
	c.t.Helper()
	return c.Subscribe(c.t, 1, filters...)
}

// mustSubscribe subscribes and requires every filter granted.
func (c *client) mustSubscribe(filters ...string) {
	c.t.Helper()
	c.MustSubscribe(c.t, 1, filters...)
}

// ack is the broker's answer to a publish: the ack packet types seen and
// the reason code of the first (PUBACK or PUBREC).
type ack struct {
	types []byte
	code  byte
}

const noAck = mqtttest.NoAck

// publish sends a message and completes its QoS flow. QoS 0 returns
// code noAck.
func (c *client) publish(topic, payload string, qos byte, retain bool) ack {
	c.t.Helper()
	a := c.Publish(c.t, topic, []byte(payload), qos, retain)
	return ack{types: a.Types, code: a.Code}
}

// ping round-trips a PINGREQ: everything the broker sent before it has
// been read once ping returns.
func (c *client) ping() {
	c.t.Helper()
	c.Ping(c.t)
}

func (c *client) err() error                                  { return c.Err() }
func (c *client) topics() []string                            { return c.Topics() }
func (c *client) waitTopic(topic string) bool                 { return c.WaitTopic(topic) }
func (c *client) message(topic string) (packets.Packet, bool) { return c.Message(topic) }
func (c *client) waitClosed() bool                            { return c.WaitClosed() }
func (c *client) quietFor(d time.Duration) []string           { return c.QuietFor(d) }
func (c *client) disconnect()                                 { _ = c.Disconnect() }

// drop closes the socket without DISCONNECT (an abnormal disconnect).
func (c *client) drop() { _ = c.Close() }

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
