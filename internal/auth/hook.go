package auth

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/acl"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// Events receives counts for metrics; any method set may be nil-safe no-ops.
type Events interface {
	AuthFailure(reason string)
	ACLDenied(op string)
	Ban()
}

// Options configures the hook.
type Options struct {
	Server   *mqtt.Server
	Policy   *Policy
	Verifier *passwd.Verifier
	Bans     BanOptions
	Events   Events
	Logger   *slog.Logger
	// Context bounds waits for a verification slot; cancelled at shutdown.
	Context context.Context
	Now     func() time.Time
}

// Hook is the one auth+ACL hook of the broker.
type Hook struct {
	mqtt.HookBase
	srv      *mqtt.Server
	policy   atomic.Pointer[Policy]
	verifier *passwd.Verifier
	bans     *bans
	events   Events
	log      *slog.Logger
	ctx      context.Context

	// ids maps a client id to the identity this hook approved for it.
	// Keyed by id (not *Client) so a session taken over by its owner
	// replaces the entry instead of leaking it.
	ids sync.Map // string -> *identity
}

var _ mqtt.Hook = (*Hook)(nil)

// identity is what the hook approved at CONNECT.
type identity struct {
	client      acl.Client
	listener    string
	fingerprint string // password entry at approval time
	revoked     atomic.Bool
	// owner is the connection approved; a later connection with the same
	// id gets its own identity, which the old one's clean-up must keep.
	owner *mqtt.Client
	// denied counts refused PUBLISHes; deniedLogged is when one was last logged.
	denied, deniedLogged atomic.Int64
}

// deniedLogEvery bounds "denied PUBLISH" lines per client: the first, then
// one per interval with the count since, so a client retrying in a loop
// leaves a trace without flooding the log.
const deniedLogEvery = 10 * time.Second

// logDenied logs a refused PUBLISH, like mosquitto's "Denied PUBLISH from".
func (h *Hook) logDenied(cl *mqtt.Client, id *identity, topic string) {
	if id == nil {
		return
	}
	n := id.denied.Add(1)
	now, last := time.Now().UnixNano(), id.deniedLogged.Load()
	if last != 0 && now-last < int64(deniedLogEvery) || !id.deniedLogged.CompareAndSwap(last, now) {
		return
	}
	id.denied.Add(-n)
	if len(topic) > 256 {
		topic = topic[:256] + "..."
	}
	h.log.Info("denied PUBLISH", "client", cl.ID, "user", id.client.Username, "ip", remoteIP(cl),
		"listener", id.listener, "topic", topic, "denied", n)
}

type noEvents struct{}

func (noEvents) AuthFailure(string) {}
func (noEvents) ACLDenied(string)   {}
func (noEvents) Ban()               {}

// New builds the hook; add it with srv.AddHook(h, nil).
func New(o Options) *Hook {
	h := &Hook{srv: o.Server, verifier: o.Verifier, events: o.Events, log: o.Logger, ctx: o.Context}
	if h.events == nil {
		h.events = noEvents{}
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.ctx == nil {
		h.ctx = context.Background()
	}
	if h.verifier == nil {
		h.verifier = passwd.NewVerifier(4, 4096)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	h.bans = newBans(o.Bans, now)
	h.policy.Store(o.Policy)
	return h
}

// ID implements mqtt.Hook.
func (h *Hook) ID() string { return "moat-auth" }

// Provides implements mqtt.Hook.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish,
		mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnWill, mqtt.OnPacketRead, mqtt.OnSubscribed:
		return true
	}
	return false
}

// Policy returns the policy in force.
func (h *Hook) Policy() *Policy { return h.policy.Load() }

// remoteIP is the client's address without the port; listeners behind a
// trusted proxy already report the real client address.
func remoteIP(cl *mqtt.Client) string {
	host, _, err := net.SplitHostPort(cl.Net.Remote)
	if err != nil {
		return cl.Net.Remote
	}
	return host
}

// refusal is a CONNECT answer other than success.
type refusal struct {
	v3, v5 byte
	reason string
}

var (
	refuseAuth      = refusal{v3: 5, v5: 0x87, reason: "not authorised"}
	refuseBanned    = refusal{v3: 3, v5: 0x9F, reason: "temporarily banned"}
	refuseClientID  = refusal{v3: 2, v5: 0x85, reason: "client identifier not valid"}
	refuseKeepalive = refusal{v3: 2, v5: 0x82, reason: "keepalive above max_keepalive"}
	errRefused      = errors.New("connection refused")
)

// OnConnect decides the whole CONNECT, before mochi's own authentication
// step, so each refusal gets mosquitto's code (or a ban's) instead of
// mochi's 0x86, and a banned client costs no password check.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	p := h.policy.Load()
	sc := p.scope(cl.Net.Listener)
	ip := remoteIP(cl)
	user := string(cl.Properties.Username)
	hasUser := pk.Connect.UsernameFlag
	logAttrs := func(reason string) []any {
		return []any{"user", user, "ip", ip, "listener", cl.Net.Listener, "client", cl.ID, "reason", reason}
	}
	fail := func(r refusal, metricReason string, counts bool) error {
		h.events.AuthFailure(metricReason)
		if counts && h.bans.fail(user, ip) {
			h.events.Ban()
			h.log.Warn("ban started", logAttrs(metricReason)...)
		}
		h.log.Warn("authentication failed", logAttrs(metricReason)...)
		h.refuse(cl, r)
		return errRefused
	}

	if h.bans.banned(user, ip) {
		return fail(refuseBanned, "banned", false)
	}
	if err := h.capKeepalive(cl, p); err != nil {
		return fail(refuseKeepalive, "keepalive", false)
	}

	var fingerprint string
	switch {
	case !hasUser:
		if !sc.AllowAnonymous {
			return fail(refuseAuth, "anonymous", true)
		}
	case sc.Passwd == nil:
		// Nothing can verify a username: refusing it stops anonymous
		// clients from claiming another user's identity and its %u topics.
		return fail(refuseAuth, "no_password_file", true)
	default:
		if !pk.Connect.PasswordFlag {
			return fail(refuseAuth, "no_password", true)
		}
		ok, err := h.verifier.Verify(h.ctx, sc.Passwd, user, pk.Connect.Password)
		if err != nil {
			h.refuse(cl, refusal{v3: 3, v5: 0x88, reason: "server unavailable"})
			return err
		}
		if !ok {
			return fail(refuseAuth, "bad_credentials", true)
		}
		fingerprint, _ = sc.Passwd.Fingerprint(user)
	}

	if p.UseUsernameAsClientID && hasUser {
		cl.ID = user
	}
	id := &identity{
		client:      acl.Client{Username: user, HasUsername: hasUser, ClientID: cl.ID},
		listener:    cl.Net.Listener,
		fingerprint: fingerprint,
		owner:       cl,
	}
	switch badUser, badID := sc.unsafeIdentity(&id.client); {
	case badUser:
		return fail(refuseAuth, "unsafe_username", true)
	case badID:
		return fail(refuseClientID, "unsafe_client_id", false)
	}
	// mochi hands an existing session (and its queued messages) to any
	// client presenting the same id (#398): only its owner may take it.
	if old, ok := h.srv.Clients.Get(cl.ID); ok && !bytes.Equal(old.Properties.Username, cl.Properties.Username) {
		return fail(refuseClientID, "client_id_in_use", false)
	}
	// mochi neither checks nor filters the Will topic (#503).
	if w := cl.Properties.Will; w.Flag > 0 {
		if !acl.ValidTopic(w.TopicName) || !sc.canWrite(&id.client, w.TopicName) {
			h.events.ACLDenied("will")
			return fail(refuseAuth, "will_denied", false)
		}
	}
	h.bans.succeed(user, ip)
	h.ids.Store(cl.ID, id)
	return nil
}

// capKeepalive bounds the keepalive: 0 must not mean "forever" on an
// internet-facing listener. MQTT 5 clients are told the new value; 3.1.1
// clients asking for more than the maximum are refused (mosquitto 2.0.12+).
func (h *Hook) capKeepalive(cl *mqtt.Client, p *Policy) error {
	max := p.MaxKeepalive
	if max == 0 {
		return nil
	}
	ka := cl.State.Keepalive
	switch {
	case ka > max && cl.Properties.ProtocolVersion < 5:
		return errRefused
	case ka == 0 || ka > max:
		cl.State.Keepalive = max
		cl.State.ServerKeepalive = cl.Properties.ProtocolVersion == 5
	}
	return nil
}

func (h *Hook) refuse(cl *mqtt.Client, r refusal) {
	code := packets.Code{Code: r.v5, Reason: r.reason}
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Code{Code: r.v3}
	}
	_ = h.srv.SendConnack(cl, code, false, nil)
}

// OnConnectAuthenticate allows only clients OnConnect approved just now.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	v, ok := h.ids.Load(cl.ID)
	return ok && v.(*identity).owner == cl && !v.(*identity).revoked.Load()
}

func (h *Hook) identity(cl *mqtt.Client) *identity {
	v, ok := h.ids.Load(cl.ID)
	if !ok {
		return h.restoredIdentity(cl)
	}
	return v.(*identity)
}

// restoredIdentity admits a persistent session restored from the store
// (no connection yet) under the identity it was stored with, so messages
// for it are queued until its owner reconnects. Its user must still be in
// the password file; the owner's reconnect replaces this identity.
func (h *Hook) restoredIdentity(cl *mqtt.Client) *identity {
	if cl.Net.Conn != nil || cl.Net.Inline {
		return nil
	}
	user := string(cl.Properties.Username)
	id := &identity{
		client:   acl.Client{Username: user, HasUsername: user != "", ClientID: cl.ID},
		listener: cl.Net.Listener,
		owner:    cl,
	}
	sc := h.policy.Load().scope(id.listener)
	if id.client.HasUsername {
		fp, ok := "", false
		if sc.Passwd != nil {
			fp, ok = sc.Passwd.Fingerprint(user)
		}
		if !ok {
			return nil
		}
		id.fingerprint = fp
	} else if !sc.AllowAnonymous {
		return nil
	}
	if badUser, badID := sc.unsafeIdentity(&id.client); badUser || badID {
		return nil
	}
	if v, loaded := h.ids.LoadOrStore(cl.ID, id); loaded {
		return v.(*identity)
	}
	return id
}

// OnACLCheck is called with write=true for PUBLISH (before topic-alias
// resolution) and write=false for each SUBSCRIBE filter and for every
// delivery. A filter (wildcards or $share) is a subscription; a plain
// topic is checked for reading, which also decides a literal subscription.
func (h *Hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id := h.identity(cl)
	if id == nil || id.revoked.Load() {
		return false
	}
	p := h.policy.Load()
	sc := p.scope(id.listener)
	if write {
		// An alias-only publish arrives with an empty topic; OnPublish
		// checks the resolved one. 3.1.1 denials are decided in OnPublish
		// too, where they can be acknowledged and dropped.
		if topic == "" || cl.Properties.ProtocolVersion < 5 {
			return true
		}
		if !sc.canWrite(&id.client, topic) {
			h.events.ACLDenied("write")
			h.logDenied(cl, id, topic)
			return false
		}
		return true
	}
	if isFilter(topic) {
		// Refusals are counted and logged in OnSubscribed, which also
		// sees literal filters.
		return sc.canSubscribe(&id.client, topic, p.StrictSubscribe)
	}
	return sc.canRead(&id.client, topic)
}

// OnPacketRead answers a QoS 1/2 publish to $SYS, which mochi drops
// before any hook without an ack, leaving the client waiting for it:
// MQTT 5 gets 0x87 as from mosquitto, 3.1.1 an ack (the message is dropped).
func (h *Hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	// A topic name with wildcards is a protocol error [MQTT-3.3.2-2]; mochi
	// would drop it without an ack and leave a QoS 1/2 client waiting.
	if pk.FixedHeader.Type == packets.Publish && strings.ContainsAny(pk.TopicName, "+#") {
		h.log.Info("publish with a wildcard topic: disconnecting", "client", cl.ID, "ip", remoteIP(cl))
		return pk, packets.ErrRejectPacket
	}
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos == 0 || cl.Net.Inline ||
		len(pk.TopicName) < len(mqtt.SysPrefix) || !strings.EqualFold(pk.TopicName[:len(mqtt.SysPrefix)], mqtt.SysPrefix) {
		return pk, nil
	}
	h.events.ACLDenied("write")
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = packets.ErrNotAuthorized.Code
	}
	_ = cl.WritePacket(ack)
	return pk, nil
}

// OnSubscribed logs every refused filter: Home Assistant and others ignore
// SUBACK failures, so the broker's log is where a refusal shows.
func (h *Hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, code := range codes {
		if code < 0x80 || i >= len(pk.Filters) {
			continue
		}
		h.events.ACLDenied("subscribe")
		h.log.Info("subscription refused", "user", string(cl.Properties.Username), "client", cl.ID,
			"filter", pk.Filters[i].Filter, "code", code)
	}
}

func isFilter(s string) bool {
	return strings.HasPrefix(s, "$share/") || strings.ContainsAny(s, "+#")
}

// OnPublish re-checks the resolved topic (after alias resolution) and
// answers 3.1.1 denials with an ack and a drop, as mosquitto does: mochi
// would disconnect, and Home Assistant-style clients then reconnect in a
// loop. It also applies message_size_limit.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	p := h.policy.Load()
	id := h.identity(cl)
	// MQTT 5 publishes with their topic were checked in OnACLCheck.
	checked := cl.Properties.ProtocolVersion == 5 && !pk.Properties.TopicAliasFlag
	if id == nil || id.revoked.Load() || !checked && !p.scope(id.listener).canWrite(&id.client, pk.TopicName) {
		h.events.ACLDenied("write")
		h.logDenied(cl, id, pk.TopicName)
		return pk, h.deny(cl, pk, packets.ErrNotAuthorized)
	}
	if p.MessageSizeLimit > 0 && uint32(len(pk.Payload)) > p.MessageSizeLimit {
		return pk, h.deny(cl, pk, packets.ErrPacketTooLarge)
	}
	return pk, nil
}

func (h *Hook) deny(cl *mqtt.Client, pk packets.Packet, code packets.Code) error {
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos == 2 {
		// mochi answers an OnPublish error with a PUBACK even at QoS 2,
		// which the client cannot match: send the PUBREC here, and drop.
		_ = cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
		})
		return packets.ErrRejectPacket
	}
	if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
		return code
	}
	return packets.CodeSuccessIgnore
}

// OnWill drops a Will whose topic the client may no longer write (the ACL
// may have changed since CONNECT). mochi ignores errors from OnWill, so
// the Will is emptied instead.
func (h *Hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	id := h.identity(cl)
	if id != nil && !id.revoked.Load() && h.policy.Load().scope(id.listener).canWrite(&id.client, will.TopicName) {
		return will, nil
	}
	h.events.ACLDenied("will")
	cl.Properties.Will = mqtt.Will{}
	return mqtt.Will{}, nil
}

// OnDisconnect forgets a clean session's identity; a persistent session
// keeps it so queued messages are still checked against its owner.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.forget(cl)
	}
}

// OnClientExpired forgets an expired persistent session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.forget(cl) }

func (h *Hook) forget(cl *mqtt.Client) {
	if v, ok := h.ids.Load(cl.ID); ok && v.(*identity).owner == cl {
		h.ids.CompareAndDelete(cl.ID, v)
	}
}

// Swap puts a new policy in force at once and disconnects connected
// clients whose credentials no longer hold: a changed or removed password
// entry, anonymous access withdrawn, or a name the new ACL finds unsafe.
// New ACLs apply to live subscriptions immediately, since every delivery
// is checked against the policy in force. It returns how many clients
// were disconnected.
func (h *Hook) Swap(p *Policy) int {
	h.policy.Store(p)
	n := 0
	for _, cl := range h.srv.Clients.GetAll() {
		id := h.identity(cl)
		if id == nil || stillValid(p.scope(id.listener), id) {
			continue
		}
		id.revoked.Store(true)
		if cl.Closed() {
			continue
		}
		h.log.Info("credentials no longer valid after reload: disconnecting", "user", id.client.Username, "client", cl.ID, "ip", remoteIP(cl))
		_ = h.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	return n
}

func stillValid(sc *Scope, id *identity) bool {
	if badUser, badID := sc.unsafeIdentity(&id.client); badUser || badID {
		return false
	}
	if !id.client.HasUsername {
		return sc.AllowAnonymous
	}
	if sc.Passwd == nil {
		return false
	}
	fp, ok := sc.Passwd.Fingerprint(id.client.Username)
	return ok && fp == id.fingerprint
}
