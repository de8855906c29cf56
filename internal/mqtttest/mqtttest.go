// Package mqtttest is a raw MQTT 3.1.1/5 client for Moat's tests and benchmarks, built on mochi's packet codecs so tests see exact reason codes.
//
// A Client reads in the background from the moment it is made: every
// packet is queued in arrival order (Next, WaitPacket) and every PUBLISH is
// also kept for WaitTopic, Topics and Message. It sends only what it is
// told to, unless Options.AutoAck makes it complete incoming QoS 1 and 2
// flows itself.
package mqtttest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DefaultTimeout bounds dialling, each write, and the waits of Connect,
// Subscribe, Publish, Ping and WaitTopic when Options.Timeout is zero.
// Generous: tests run on shared, noisy machines.
const DefaultTimeout = 10 * time.Second

// NoAck is Ack.Code for a QoS 0 publish, which nothing answers.
const NoAck = 0xff

// ErrTimeout is returned by Next when nothing arrived in time.
var ErrTimeout = errors.New("mqtttest: read timeout")

// T is the part of testing.TB that the failing helpers use.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Will is a CONNECT's will message.
type Will struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Options describe a connection and its CONNECT.
type Options struct {
	// Version is the protocol level: 3 (3.1, "MQIsdp"), 4 (3.1.1, the
	// default) or 5.
	Version  byte
	ClientID string
	// Username and Password are sent when non-empty, or when their flag
	// is set (to send an empty one).
	Username, Password         string
	UsernameFlag, PasswordFlag bool
	// Persistent clears Clean Session (3.1.1) / Clean Start (5).
	Persistent bool
	// SessionExpiry is the MQTT 5 session expiry interval in seconds
	// (0: property absent).
	SessionExpiry uint32
	// KeepAlive is sent as is: 0 means none.
	KeepAlive uint16
	Will      *Will
	// LocalIP is the address Dial connects from ("" for any).
	LocalIP string
	// AutoAck answers incoming PUBLISH (PUBACK, PUBREC) and PUBREL
	// (PUBCOMP) as a well-behaved client does.
	AutoAck bool
	// Timeout replaces DefaultTimeout.
	Timeout time.Duration
	// Tweak, when set, edits the CONNECT before it is sent (properties
	// the fields above do not cover).
	Tweak func(*packets.Packet)
}

// State is what a client has received, as a WaitUntil condition sees it.
// The slices are valid only during the call.
type State struct {
	Messages []packets.Packet // every PUBLISH received, in order
	Pending  []packets.Packet // packets not yet taken by Next or WaitPacket
	Err      error            // why the connection ended; nil while open
}

// Ack is the broker's answer to a publish: the types of the
// acknowledgements seen, and the reason code of the first (NoAck at QoS 0).
type Ack struct {
	Types []byte
	Code  byte
}

// Client is one raw MQTT connection.
type Client struct {
	conn    net.Conn
	o       Options
	timeout time.Duration
	wmu     sync.Mutex

	mu     sync.Mutex
	cond   *sync.Cond
	st     State
	nextID uint16
	// sink, when set, takes every packet on the reading goroutine
	// instead of the queue (PublishWindow: no hand-over per PUBACK).
	sink  func(packets.Packet)
	ended chan struct{} // closed when the reading ends
}

// Dial connects over TCP, sends the CONNECT and returns the client with the
// CONNACK. A refused CONNACK is no error: the client is returned for the
// caller to judge (the broker then closes it).
func Dial(addr string, o Options) (*Client, packets.Packet, error) {
	d := net.Dialer{Timeout: timeoutOf(o)}
	if o.LocalIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(o.LocalIP)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, packets.Packet{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	return Connect(conn, o)
}

// Connect is Dial over a connection already made (TLS, WebSocket...).
// conn is closed on error.
func Connect(conn net.Conn, o Options) (*Client, packets.Packet, error) {
	c := New(conn, o)
	ack, err := c.Connect()
	if err != nil {
		conn.Close()
		return nil, ack, err
	}
	return c, ack, nil
}

// New wraps conn without sending anything and starts reading.
func New(conn net.Conn, o Options) *Client {
	if o.Version == 0 {
		o.Version = 4
	}
	c := &Client{conn: conn, o: o, timeout: timeoutOf(o), ended: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.readLoop()
	return c
}

func timeoutOf(o Options) time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	return DefaultTimeout
}

// ConnectPacket is the CONNECT that o describes.
func ConnectPacket(o Options) packets.Packet {
	if o.Version == 0 {
		o.Version = 4
	}
	name := "MQTT"
	if o.Version == 3 {
		name = "MQIsdp"
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: o.Version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte(name),
			ClientIdentifier: o.ClientID,
			Clean:            !o.Persistent,
			Keepalive:        o.KeepAlive,
			UsernameFlag:     o.UsernameFlag || o.Username != "",
			Username:         []byte(o.Username),
			PasswordFlag:     o.PasswordFlag || o.Password != "",
			Password:         []byte(o.Password),
		},
	}
	if o.Version == 5 && o.SessionExpiry > 0 {
		pk.Properties.SessionExpiryInterval = o.SessionExpiry
		pk.Properties.SessionExpiryIntervalFlag = true
	}
	if w := o.Will; w != nil {
		pk.Connect.WillFlag = true
		pk.Connect.WillTopic = w.Topic
		pk.Connect.WillPayload = w.Payload
		pk.Connect.WillQos = w.QoS
		pk.Connect.WillRetain = w.Retain
	}
	if o.Tweak != nil {
		o.Tweak(&pk)
	}
	return pk
}

// Encode returns the wire bytes of a packet a client sends, at protocol
// version v. SUBSCRIBE, UNSUBSCRIBE and PUBREL get their required QoS 1
// flag.
func Encode(pk packets.Packet, v byte) ([]byte, error) {
	pk.ProtocolVersion = v
	var buf bytes.Buffer
	var err error
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
		pk.FixedHeader.Qos = 1
		err = pk.PubrelEncode(&buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
		err = pk.UnsubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	case packets.Auth:
		err = pk.AuthEncode(&buf)
	default:
		err = fmt.Errorf("mqtttest: cannot send packet type %d", pk.FixedHeader.Type)
	}
	return buf.Bytes(), err
}

// Connect sends the CONNECT of the client's options and waits for the
// CONNACK.
func (c *Client) Connect() (packets.Packet, error) {
	if err := c.Write(ConnectPacket(c.o)); err != nil {
		return packets.Packet{}, fmt.Errorf("send CONNECT: %w", err)
	}
	ack, err := c.Next(c.timeout)
	if err != nil {
		return ack, fmt.Errorf("waiting for CONNACK: %w", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		return ack, fmt.Errorf("got packet type %d instead of CONNACK", ack.FixedHeader.Type)
	}
	return ack, nil
}

// Conn is the underlying connection, for raw tricks (CloseWrite, TLS state).
func (c *Client) Conn() net.Conn { return c.conn }

// Version is the protocol level in use.
func (c *Client) Version() byte { return c.o.Version }

// Write encodes and sends one packet (see Encode).
func (c *Client) Write(pk packets.Packet) error {
	b, err := Encode(pk, c.o.Version)
	if err != nil {
		return err
	}
	return c.WriteBytes(b)
}

// WriteBytes sends raw bytes, whole, between packets the client writes.
func (c *Client) WriteBytes(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := c.conn.Write(b)
	return err
}

// SendPublish sends a PUBLISH and nothing else (id is ignored at QoS 0).
func (c *Client) SendPublish(topic string, payload []byte, qos byte, retain bool, id uint16) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos > 0 {
		pk.PacketID = id
	}
	return c.Write(pk)
}

// SendSubscribe sends a SUBSCRIBE for the filters at qos; the SUBACK is
// left to Next or WaitPacket.
func (c *Client) SendSubscribe(id uint16, qos byte, filters ...string) error {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: qos})
	}
	return c.Write(pk)
}

// Disconnect sends DISCONNECT (reason 0) and closes the connection.
func (c *Client) Disconnect() error {
	err := c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	c.conn.Close()
	return err
}

// Close closes the connection without DISCONNECT (an abnormal disconnect).
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) readLoop() {
	r := bufio.NewReaderSize(c.conn, 8<<10)
	var err error
	for {
		var pk packets.Packet
		pk, err = ReadPacket(r, c.o.Version)
		if err != nil {
			break
		}
		if c.o.AutoAck {
			c.autoAck(pk)
		}
		c.mu.Lock()
		if sink := c.sink; sink != nil {
			c.mu.Unlock()
			sink(pk)
			continue
		}
		if pk.FixedHeader.Type == packets.Publish {
			c.st.Messages = append(c.st.Messages, pk)
		}
		c.st.Pending = append(c.st.Pending, pk)
		c.mu.Unlock()
		c.cond.Broadcast()
	}
	c.mu.Lock()
	c.st.Err = err
	c.mu.Unlock()
	c.cond.Broadcast()
	close(c.ended)
}

// autoAck answers as a client completing the broker's QoS flows. A write
// error shows up as the read loop ending.
func (c *Client) autoAck(pk packets.Packet) {
	var typ byte
	switch {
	case pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 1:
		typ = packets.Puback
	case pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2:
		typ = packets.Pubrec
	case pk.FixedHeader.Type == packets.Pubrel:
		typ = packets.Pubcomp
	default:
		return
	}
	_ = c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: pk.PacketID})
}

// ReadPacket reads and decodes one packet a broker sends, at protocol
// version v.
func ReadPacket(r *bufio.Reader, v byte) (packets.Packet, error) {
	pk := packets.Packet{ProtocolVersion: v}
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
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	case packets.Pingresp:
		err = pk.PingrespDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Auth:
		err = pk.AuthDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// Err is why the connection ended (io.EOF when the broker closed it); nil
// while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Err
}

// WaitUntil waits up to d until cond holds; it reports false on the
// deadline. cond runs under the client's lock: it must only look.
func (c *Client) WaitUntil(d time.Duration, cond func(s State) bool) bool {
	timer := time.AfterFunc(d, c.cond.Broadcast)
	defer timer.Stop()
	deadline := time.Now().Add(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	for !cond(c.st) {
		if !time.Now().Before(deadline) {
			return false
		}
		c.cond.Wait()
	}
	return true
}

// take waits up to d for the first pending packet match accepts and
// removes it from the queue.
func (c *Client) take(d time.Duration, match func(packets.Packet) bool) (packets.Packet, bool) {
	var got packets.Packet
	found := false
	c.WaitUntil(d, func(s State) bool {
		for i, pk := range s.Pending {
			if match(pk) {
				got, found = pk, true
				if i == 0 {
					// Taking in order stays O(1) over a long queue.
					c.st.Pending[0] = packets.Packet{}
					c.st.Pending = c.st.Pending[1:]
				} else {
					c.st.Pending = slices.Delete(c.st.Pending, i, i+1)
				}
				return true
			}
		}
		return s.Err != nil
	})
	return got, found
}

// Next takes the oldest packet not yet taken. It returns ErrTimeout when
// none arrives within d, and the connection's error once it has ended and
// everything before was taken.
func (c *Client) Next(d time.Duration) (packets.Packet, error) {
	pk, ok := c.take(d, func(packets.Packet) bool { return true })
	if ok {
		return pk, nil
	}
	if err := c.Err(); err != nil {
		return pk, err
	}
	return pk, ErrTimeout
}

// WaitPacket takes the first packet of type typ (and packet id id, when
// non-zero), leaving the others queued.
func (c *Client) WaitPacket(typ byte, id uint16, d time.Duration) (packets.Packet, bool) {
	return c.take(d, func(pk packets.Packet) bool {
		return pk.FixedHeader.Type == typ && (id == 0 || pk.PacketID == id)
	})
}

// NextID numbers the client's own packets from 1, as real clients do,
// wrapping below 32768: Moat numbers its deliveries from 32768 because
// mochi keeps both in one inflight map (a clash is SUBACK 0x91).
func (c *Client) NextID() uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID = c.nextID%32767 + 1
	return c.nextID
}

// Subscribe subscribes to every filter at qos in one SUBSCRIBE and returns
// the SUBACK's reason codes; it fails t if no SUBACK comes.
func (c *Client) Subscribe(t T, qos byte, filters ...string) []byte {
	t.Helper()
	id := c.NextID()
	if err := c.SendSubscribe(id, qos, filters...); err != nil {
		t.Fatalf("%s: SUBSCRIBE %v: %v", c.o.ClientID, filters, err)
	}
	ack, ok := c.WaitPacket(packets.Suback, id, c.timeout)
	if !ok {
		t.Fatalf("%s: no SUBACK for %v: %v", c.o.ClientID, filters, c.Err())
	}
	return ack.ReasonCodes
}

// MustSubscribe subscribes at qos and fails t unless every filter is
// granted.
func (c *Client) MustSubscribe(t T, qos byte, filters ...string) {
	t.Helper()
	for i, code := range c.Subscribe(t, qos, filters...) {
		if code >= 0x80 {
			t.Fatalf("%s: SUBACK for %s = 0x%02x, want granted", c.o.ClientID, filters[i], code)
		}
	}
}

// Publish sends a message and completes its QoS flow (PUBACK; PUBREC,
// PUBREL, PUBCOMP) and returns the broker's answers; it fails t if an
// answer does not come.
func (c *Client) Publish(t T, topic string, payload []byte, qos byte, retain bool) Ack {
	t.Helper()
	var id uint16
	if qos > 0 {
		id = c.NextID()
	}
	if err := c.SendPublish(topic, payload, qos, retain, id); err != nil {
		t.Fatalf("%s: PUBLISH %s: %v", c.o.ClientID, topic, err)
	}
	switch qos {
	case 0:
		return Ack{Code: NoAck}
	case 1:
		a, ok := c.WaitPacket(packets.Puback, id, c.timeout)
		if !ok {
			t.Fatalf("%s: no PUBACK for %s: %v", c.o.ClientID, topic, c.Err())
		}
		return Ack{Types: []byte{packets.Puback}, Code: a.ReasonCode}
	}
	// mochi answers a v5 OnPublish error with a PUBACK even at QoS 2.
	got, ok := c.take(c.timeout, func(a packets.Packet) bool {
		return (a.FixedHeader.Type == packets.Pubrec || a.FixedHeader.Type == packets.Puback) && a.PacketID == id
	})
	if !ok {
		t.Fatalf("%s: no PUBREC for %s: %v", c.o.ClientID, topic, c.Err())
	}
	res := Ack{Types: []byte{got.FixedHeader.Type}, Code: got.ReasonCode}
	if got.FixedHeader.Type == packets.Pubrec && got.ReasonCode < 0x80 {
		if err := c.Write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel}, PacketID: id}); err != nil {
			t.Fatalf("%s: PUBREL for %s: %v", c.o.ClientID, topic, err)
		}
		if _, ok := c.WaitPacket(packets.Pubcomp, id, c.timeout); !ok {
			t.Fatalf("%s: no PUBCOMP for %s: %v", c.o.ClientID, topic, c.Err())
		}
		res.Types = append(res.Types, packets.Pubcomp)
	}
	return res
}

// Ping round-trips a PINGREQ: everything the broker sent before has been
// received once it returns. It fails t without a PINGRESP.
func (c *Client) Ping(t T) {
	t.Helper()
	if err := c.WriteBytes([]byte{packets.Pingreq << 4, 0}); err != nil {
		t.Fatalf("%s: PINGREQ: %v", c.o.ClientID, err)
	}
	if _, ok := c.WaitPacket(packets.Pingresp, 0, c.timeout); !ok {
		t.Fatalf("%s: no PINGRESP: %v", c.o.ClientID, c.Err())
	}
}

// Topics returns the topics of the messages received so far, in order.
func (c *Client) Topics() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.st.Messages))
	for _, m := range c.st.Messages {
		out = append(out, m.TopicName)
	}
	return out
}

// Message returns the first message received on topic.
func (c *Client) Message(topic string) (packets.Packet, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.st.Messages {
		if m.TopicName == topic {
			return m, true
		}
	}
	return packets.Packet{}, false
}

// WaitTopic waits until a message on topic has arrived.
func (c *Client) WaitTopic(topic string) bool {
	has := func(s State) bool {
		return slices.ContainsFunc(s.Messages, func(m packets.Packet) bool { return m.TopicName == topic })
	}
	ok := false
	c.WaitUntil(c.timeout, func(s State) bool {
		ok = has(s)
		return ok || s.Err != nil
	})
	return ok
}

// WaitClosed waits until the connection has ended.
func (c *Client) WaitClosed() bool {
	return c.WaitUntil(c.timeout, func(s State) bool { return s.Err != nil })
}

// QuietFor waits d for new messages and returns the topics of those that
// came; used only to confirm an absence an ordered marker already implies.
func (c *Client) QuietFor(d time.Duration) []string {
	n := len(c.Topics())
	c.WaitUntil(d, func(s State) bool { return len(s.Messages) > n })
	return c.Topics()[n:]
}

// WSConn adapts a WebSocket connection to net.Conn: each Write is one
// binary message, Read runs across messages.
type WSConn struct {
	*websocket.Conn
	r   io.Reader
	wmu sync.Mutex
}

var _ net.Conn = (*WSConn)(nil)

// DialWS opens a WebSocket connection offering the "mqtt" subprotocol.
func DialWS(url string, cfg *tls.Config) (*WSConn, error) {
	d := websocket.Dialer{TLSClientConfig: cfg, Subprotocols: []string{"mqtt"}, HandshakeTimeout: DefaultTimeout}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		return nil, fmt.Errorf("websocket %s: %w", url, err)
	}
	resp.Body.Close()
	return &WSConn{Conn: ws}, nil
}

// TLS is the connection's TLS state (zero without TLS).
func (c *WSConn) TLS() tls.ConnectionState {
	if tc, ok := c.NetConn().(*tls.Conn); ok {
		return tc.ConnectionState()
	}
	return tls.ConnectionState{}
}

func (c *WSConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *WSConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline holds the write lock: gorilla's deadline is not
// synchronised with its writes.
func (c *WSConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets both deadlines.
func (c *WSConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// Msg is one message of PublishWindow.
type Msg struct {
	Topic   string
	Payload []byte
	Retain  bool
	Seq     int // the caller's own number, handed back with the PUBACK
}

// PublishWindow publishes QoS 1 messages from next, keeping up to window
// unacknowledged, until next has no more (then it waits for the last
// PUBACKs), stop is closed, or the connection ends or stays silent for the
// client's timeout; it closes the connection when it returns. acked runs
// on the reading goroutine for each PUBACK, with its message and reason
// code. A PUBACK for a packet id not in flight ends the run with an error;
// a broken connection does not. The client's queue (Next) is emptied and
// no longer filled.
func (c *Client) PublishWindow(window int, stop <-chan struct{}, next func() (Msg, bool), acked func(m Msg, code byte)) error {
	defer c.Close()
	var (
		mu       sync.Mutex
		inflight = map[uint16]Msg{}
		slots    = make(chan struct{}, window)
		readErr  error
		done     = c.ended
		// A silent broker ends the run after the client's timeout.
		idle = time.AfterFunc(c.timeout, func() { c.Close() })
	)
	// Packets queued before are dropped: the window owns the connection.
	c.mu.Lock()
	c.st.Pending = nil
	c.sink = func(pk packets.Packet) {
		if pk.FixedHeader.Type != packets.Puback {
			return
		}
		mu.Lock()
		m, ok := inflight[pk.PacketID]
		delete(inflight, pk.PacketID)
		if !ok && readErr == nil {
			readErr = fmt.Errorf("PUBACK for packet id %d, not in flight", pk.PacketID)
		}
		mu.Unlock()
		if !ok {
			c.Close()
			return
		}
		idle.Reset(c.timeout)
		if acked != nil {
			acked(m, pk.ReasonCode)
		}
		<-slots
	}
	c.mu.Unlock()
	defer idle.Stop()
	result := func() error {
		mu.Lock()
		defer mu.Unlock()
		return readErr
	}
	finish := func() error {
		c.Close()
		<-done
		return result()
	}
	for n := 1; ; n++ {
		select {
		case slots <- struct{}{}:
		case <-done:
			return result()
		case <-stop:
			return finish()
		}
		idle.Reset(c.timeout)
		m, ok := next()
		if !ok {
			break
		}
		id := uint16(n%60000) + 1
		mu.Lock()
		inflight[id] = m
		mu.Unlock()
		if err := c.SendPublish(m.Topic, m.Payload, 1, m.Retain, id); err != nil {
			return finish()
		}
	}
	// The slot taken for the message next did not have is free again.
	for range window - 1 {
		select {
		case slots <- struct{}{}:
		case <-done:
			return result()
		case <-stop:
			return finish()
		}
	}
	return finish()
}
