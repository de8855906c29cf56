package auth

import (
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
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/mochi"
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
	// MayQueue, if set, is asked before a message is queued for a session
	// whose client is offline: false leaves it out (a queue quota).
	MayQueue func(*mqtt.Client) bool
}

// Hook is the one auth+ACL hook of the broker.
type Hook struct {
	mqtt.HookBase
	srv      *mqtt.Server
	policy   atomic.Pointer[Policy]
	verifier *passwd.Verifier
	bans     *bans
	quiet    *logging.Limiter // refusal lines per network
	events   Events
	log      *slog.Logger
	ctx      context.Context
	mayQueue func(*mqtt.Client) bool

	// ids maps a client id to the identity that owns it. Keyed by id (not
	// *Client) so a session taken over by its owner replaces the entry
	// instead of leaking it. Claims and discards write it under mu.
	ids sync.Map // string -> *identity

	// mu serialises client-id claims: checking that no other owner holds
	// an id and handing the id over happen as one step.
	mu sync.Mutex
	// approved holds identities OnConnect approved until
	// OnConnectAuthenticate claims their client id (guarded by mu).
	approved     map[*mqtt.Client]*identity
	approvedMark int
	store        atomic.Pointer[sessionStore]
}

// SessionStore is told about sessions and queued messages the hook
// discards, so that their persistent copies go too. The store's hook
// satisfies it.
type SessionStore interface {
	OnClientExpired(cl *mqtt.Client)
	OnQosDropped(cl *mqtt.Client, pk packets.Packet)
}

type sessionStore struct{ SessionStore }

// claimGrace bounds how long a claimed client id not yet attached to its
// session (mochi attaches it right after OnConnectAuthenticate, with no
// way out in between) keeps other owners away.
const claimGrace = 10 * time.Second

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
	// claimed is when the client id was handed to owner (guarded by mu).
	claimed time.Time
	// gone is set when the owner can no longer log in at all (user
	// removed): its session is removed once it is offline.
	gone atomic.Bool
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

// sameOwner reports whether a session of cl belongs to id's owner: the
// same username in the same authentication scope. Under
// per_listener_settings a same-named user on another listener is someone
// else.
func sameOwner(p *Policy, id *identity, cl *mqtt.Client) bool {
	return string(cl.Properties.Username) == id.client.Username && p.scope(cl.Net.Listener) == p.scope(id.listener)
}

func (id *identity) sameOwnerAs(p *Policy, o *identity) bool {
	return id.client.Username == o.client.Username && p.scope(id.listener) == p.scope(o.listener)
}

type noEvents struct{}

func (noEvents) AuthFailure(string) {}
func (noEvents) ACLDenied(string)   {}
func (noEvents) Ban()               {}

// New builds the hook; add it with srv.AddHook(h, nil).
func New(o Options) *Hook {
	h := &Hook{srv: o.Server, verifier: o.Verifier, events: o.Events, log: o.Logger, ctx: o.Context,
		mayQueue: o.MayQueue, approved: map[*mqtt.Client]*identity{}}
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
	h.quiet = logging.NewLimiter(h.log, logging.LimitOptions{
		Burst: refusalLogBurst, Window: refusalLogWindow,
		Message: "repeated refusals not logged", KeyAttr: "network", Now: now,
	})
	h.policy.Store(o.Policy)
	return h
}

// Refusals that do not count towards a ban (a banned client retrying, a
// refused keepalive) are logged at most refusalLogBurst times per network
// in each refusalLogWindow, then summarised.
const (
	refusalLogBurst  = 5
	refusalLogWindow = 10 * time.Second
)

// ID implements mqtt.Hook.
func (h *Hook) ID() string { return "moat-auth" }

// Provides implements mqtt.Hook.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnPublish,
		mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnWill, mqtt.OnPacketRead, mqtt.OnSubscribed,
		mqtt.OnSessionEstablish:
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
	h.awaitCleanEnd(cl.ID)
	p := h.policy.Load()
	sc := p.scope(cl.Net.Listener)
	ip := remoteIP(cl)
	user := string(cl.Properties.Username)
	hasUser := pk.Connect.UsernameFlag
	known := false
	if hasUser && sc.Passwd != nil {
		_, known = sc.Passwd.Fingerprint(user)
	}
	at := h.bans.attempt(user, hasUser, known, ip)
	// The address comes first, before anything the client chose, so a
	// fail2ban regex anchored on the message cannot be steered.
	logAttrs := func(reason string) []any {
		return []any{"ip", ip, "user", user, "listener", cl.Net.Listener, "client", cl.ID, "reason", reason}
	}
	// refused answers and logs a refusal. Failures that count towards a
	// ban are bounded by the ban and always logged (fail2ban counts
	// them); repeated refusals that do not count are rate-limited per
	// network.
	refused := func(r refusal, metricReason string, counted, banStarted bool) error {
		h.events.AuthFailure(metricReason)
		if banStarted {
			h.events.Ban()
			h.log.Warn("ban started", append(logAttrs(metricReason), "network", at.network)...)
		}
		if counted || h.quiet.Allow(at.network) {
			h.log.Warn("authentication failed", logAttrs(metricReason)...)
		}
		h.refuse(cl, r)
		return errRefused
	}
	fail := func(r refusal, metricReason string, counts bool) error {
		return refused(r, metricReason, counts, counts && h.bans.fail(at))
	}

	if h.bans.banned(at) {
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
		// A password remembered as good costs no hash and takes no slot;
		// everything else is charged before it is hashed.
		if !h.verifier.Remembered(sc.Passwd, user, pk.Connect.Password) {
			switch h.bans.begin(&at) {
			case refusedBanned:
				return fail(refuseBanned, "banned", false)
			case refusedBusy:
				return fail(refuseBanned, "busy", false)
			}
			ok, err := h.verifier.Verify(h.ctx, sc.Passwd, user, pk.Connect.Password)
			started := h.bans.end(at, err == nil && !ok)
			if err != nil {
				h.refuse(cl, refusal{v3: 3, v5: 0x88, reason: "server unavailable"})
				return err
			}
			if !ok {
				return refused(refuseAuth, "bad_credentials", true, started)
			}
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
	// client presenting the same id (#398): a live session of another
	// owner refuses the newcomer (OnConnectAuthenticate decides for good).
	if h.heldByOther(p, id) {
		return fail(refuseClientID, "client_id_in_use", false)
	}
	// mochi neither checks nor filters the Will topic (#503).
	if w := cl.Properties.Will; w.Flag > 0 {
		if !acl.ValidTopic(w.TopicName) || !sc.canWrite(&id.client, w.TopicName) {
			h.events.ACLDenied("will")
			return fail(refuseAuth, "will_denied", false)
		}
	}
	h.bans.succeed(at)
	h.approve(cl, id)
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

func (h *Hook) approve(cl *mqtt.Client, id *identity) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.approved) >= h.approvedMark {
		// An approval a later hook refused never reaches
		// OnConnectAuthenticate; its connection is closed by then.
		for c := range h.approved {
			if c.Closed() {
				delete(h.approved, c)
			}
		}
		h.approvedMark = 2*len(h.approved) + 64
	}
	h.approved[cl] = id
}

// OnConnectAuthenticate allows only clients OnConnect approved, and claims
// their client id. It runs after every hook's OnConnect, and mochi attaches
// the session right after it with no way out in between, so a claimed id
// is always attached: of two simultaneous CONNECTs of different owners for
// one id, exactly one gets it and the other is refused.
func (h *Hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	id, claimed := h.claim(cl)
	if id == nil || claimed {
		return claimed
	}
	h.events.AuthFailure("client_id_in_use")
	// The address first, as in OnConnect's lines (fail2ban).
	h.log.Warn("authentication failed", "ip", remoteIP(cl), "user", id.client.Username,
		"listener", cl.Net.Listener, "client", cl.ID, "reason", "client_id_in_use")
	h.refuse(cl, refuseClientID)
	// Closed, so mochi's own refusal CONNACK is not written after ours.
	cl.Stop(errRefused)
	return false
}

// claim hands cl's client id to the identity OnConnect approved for it,
// unless another owner holds the id; id is nil when nothing was approved.
func (h *Hook) claim(cl *mqtt.Client) (id *identity, claimed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id, ok := h.approved[cl]
	delete(h.approved, cl)
	if !ok || id.revoked.Load() {
		return nil, false
	}
	p := h.policy.Load()
	if !stillValid(p.scope(id.listener), id) {
		// A reload changed the credentials since they were verified.
		return nil, false
	}
	if h.conflictLocked(p, id) {
		return id, false
	}
	if ex, ok := h.srv.Clients.Get(cl.ID); ok && ex != cl && !sameOwner(p, id, ex) {
		// Offline (conflictLocked refuses live ones): the newcomer gets a
		// fresh session; mochi would hand this one over.
		h.discardLocked(ex, "client id taken by another owner")
	}
	id.claimed = time.Now()
	h.ids.Store(cl.ID, id)
	return id, true
}

// heldByOther reports whether another owner's live session, or a claim
// about to become one, holds id's client id.
func (h *Hook) heldByOther(p *Policy, id *identity) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.conflictLocked(p, id)
}

func (h *Hook) conflictLocked(p *Policy, id *identity) bool {
	cid := id.client.ClientID
	ex, attached := h.srv.Clients.Get(cid)
	if attached && !ex.Closed() && !sameOwner(p, id, ex) {
		return true
	}
	if v, ok := h.ids.Load(cid); ok {
		cur := v.(*identity)
		pending := (!attached || ex != cur.owner) && time.Since(cur.claimed) < claimGrace
		if pending && !cur.sameOwnerAs(p, id) {
			return true
		}
	}
	return false
}

// discardLocked removes a session with its subscriptions and queued
// messages, in memory and in the store.
func (h *Hook) discardLocked(cl *mqtt.Client, why string) {
	h.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
	if cur, ok := h.srv.Clients.Get(cl.ID); ok && cur == cl {
		h.srv.Clients.Delete(cl.ID)
	}
	if v, ok := h.ids.Load(cl.ID); ok && v.(*identity).owner == cl {
		h.ids.CompareAndDelete(cl.ID, v)
	}
	if st := h.store.Load(); st != nil {
		st.OnClientExpired(cl)
	}
	h.log.Info("session discarded", "client", cl.ID, "user", string(cl.Properties.Username),
		"listener", cl.Net.Listener, "reason", why)
}

// SetSessionStore names the store whose copies of discarded sessions and
// messages must go too; call it before Serve.
func (h *Hook) SetSessionStore(st SessionStore) { h.store.Store(&sessionStore{st}) }

// OnSessionEstablish runs just before mochi hands the existing session of
// the client id to the new connection and resends its queued messages
// without asking the ACL: those the owner may no longer read go first.
func (h *Hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	v, ok := h.ids.Load(cl.ID)
	if !ok || v.(*identity).owner != cl {
		return
	}
	id := v.(*identity)
	p := h.policy.Load()
	h.mu.Lock()
	defer h.mu.Unlock()
	ex, ok := h.srv.Clients.Get(cl.ID)
	if !ok || ex == cl {
		return
	}
	if !sameOwner(p, id, ex) {
		// claim refused live ones and discarded offline ones: this cannot
		// happen, but if it did, the session must still not be handed over.
		h.discardLocked(ex, "client id taken by another owner")
		return
	}
	h.dropUnreadable(p, id, ex)
}

// dropUnreadable removes the queued and in-flight deliveries of cl that
// id may not read under p, and returns how many.
func (h *Hook) dropUnreadable(p *Policy, id *identity, cl *mqtt.Client) int {
	sc := p.scope(id.listener)
	n := 0
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type != packets.Publish || sc.canRead(&id.client, pk.TopicName) {
			continue
		}
		if h.dropInflight(cl, pk) {
			h.events.ACLDenied("read")
			n++
		}
	}
	if n > 0 {
		h.log.Info("queued messages dropped: no longer readable", "client", cl.ID, "user", id.client.Username, "count", n)
	}
	return n
}

func (h *Hook) dropInflight(cl *mqtt.Client, pk packets.Packet) bool {
	if !cl.State.Inflight.Delete(pk.PacketID) {
		return false
	}
	atomic.AddInt64(&h.srv.Info.Inflight, -1)
	if st := h.store.Load(); st != nil {
		st.OnQosDropped(cl, pk)
	}
	return true
}

// identity is the owner cl acts for; nil when cl's session no longer
// belongs to the owner of its client id.
func (h *Hook) identity(cl *mqtt.Client) *identity {
	v, ok := h.ids.Load(cl.ID)
	if !ok {
		return h.restoredIdentity(cl)
	}
	id := v.(*identity)
	if id.owner != cl && !sameOwner(h.policy.Load(), id, cl) {
		return nil
	}
	return id
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
		if o := v.(*identity); o.owner == cl || sameOwner(h.policy.Load(), o, cl) {
			return o
		}
		return nil
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
	if !sc.canRead(&id.client, topic) {
		return false
	}
	// mochi asks this just before it queues a delivery: an offline
	// session's queue is bounded here.
	return h.mayQueue == nil || !cl.Closed() || h.mayQueue(cl)
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
	_ = mochi.WriteAck(cl, pk, packets.ErrNotAuthorized.Code)
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
		_ = mochi.WriteAck(cl, pk, code.Code)
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
// keeps it so queued messages are still checked against its owner, unless
// its user was removed: then the session goes.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if cl.IsTakenOver() {
		return
	}
	if expire && h.claimedByNewer(cl) {
		// A newer connection of the id is on its way: mochi must not remove
		// this clean session by id after this call, which would take the
		// newcomer's subscriptions and registration with it.
		mochi.MarkTakenOver(cl)
		return
	}
	if expire {
		h.forget(cl)
		return
	}
	if v, ok := h.ids.Load(cl.ID); ok && v.(*identity).owner == cl && v.(*identity).gone.Load() {
		h.mu.Lock()
		h.discardLocked(cl, "user removed")
		h.mu.Unlock()
	}
}

// claimedByNewer reports whether another connection has claimed cl's id.
func (h *Hook) claimedByNewer(cl *mqtt.Client) bool {
	v, ok := h.ids.Load(cl.ID)
	return ok && v.(*identity).owner != cl
}

// awaitCleanEnd waits, briefly, for a clean session of id whose
// connection has ended to be removed by mochi: mochi removes it by id, so
// a newcomer with the same id attached in between would be removed with
// it. The removal follows the end of the connection at once; the wait is
// bounded in case it never comes.
func (h *Hook) awaitCleanEnd(id string) {
	ex, ok := h.srv.Clients.Get(id)
	if !ok || !ex.Closed() || ex.Net.Inline || mochi.Persistent(ex) || ex.IsTakenOver() {
		return
	}
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		if cur, ok := h.srv.Clients.Get(id); !ok || cur != ex || ex.IsTakenOver() {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// OnClientExpired forgets an expired persistent session.
func (h *Hook) OnClientExpired(cl *mqtt.Client) { h.forget(cl) }

func (h *Hook) forget(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v, ok := h.ids.Load(cl.ID); ok && v.(*identity).owner == cl {
		h.ids.CompareAndDelete(cl.ID, v)
	}
}

// Swap puts a new policy in force at once and disconnects connected
// clients whose credentials no longer hold: a changed or removed password
// entry, anonymous access withdrawn, or a name the new ACL finds unsafe.
// New ACLs apply to live subscriptions immediately, since every delivery
// is checked against the policy in force; queued messages the new ACL
// forbids are dropped, and the sessions of users who can no longer log
// in (removed from the password file, anonymous access withdrawn) are
// removed. It returns how many clients were disconnected.
func (h *Hook) Swap(p *Policy) int {
	h.policy.Store(p)
	n := 0
	for _, cl := range h.srv.Clients.GetAll() {
		id := h.identity(cl)
		if cl.Closed() {
			if id != nil && !stillValid(p.scope(id.listener), id) {
				id.revoked.Store(true)
			}
			h.reviewOffline(p, cl)
			continue
		}
		if id == nil {
			continue
		}
		if stillValid(p.scope(id.listener), id) {
			h.dropUnreadable(p, id, cl)
			continue
		}
		id.gone.Store(!admissible(p, cl))
		id.revoked.Store(true)
		if cl.Closed() {
			h.reviewOffline(p, cl)
			continue
		}
		h.log.Info("credentials no longer valid after reload: disconnecting", "user", id.client.Username, "client", cl.ID, "ip", remoteIP(cl))
		_ = h.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	return n
}

// PruneSessions applies the policy in force to the offline sessions mochi
// holds (those restored from the store at start-up): sessions whose owner
// can no longer log in are removed, queued messages it may no longer read
// are dropped.
func (h *Hook) PruneSessions() {
	p := h.policy.Load()
	for _, cl := range h.srv.Clients.GetAll() {
		if cl.Closed() {
			h.reviewOffline(p, cl)
		}
	}
}

func (h *Hook) reviewOffline(p *Policy, cl *mqtt.Client) {
	if !admissible(p, cl) {
		h.mu.Lock()
		h.discardLocked(cl, "user removed")
		h.mu.Unlock()
		return
	}
	user := string(cl.Properties.Username)
	id := &identity{client: acl.Client{Username: user, HasUsername: user != "", ClientID: cl.ID}, listener: cl.Net.Listener}
	h.dropUnreadable(p, id, cl)
}

// admissible reports whether the owner of cl's session could still log in
// under p: its user is in the password file of the session's scope (or
// anonymous access is allowed there) and its names are safe.
func admissible(p *Policy, cl *mqtt.Client) bool {
	sc := p.scope(cl.Net.Listener)
	user := string(cl.Properties.Username)
	c := acl.Client{Username: user, HasUsername: user != "", ClientID: cl.ID}
	if badUser, badID := sc.unsafeIdentity(&c); badUser || badID {
		return false
	}
	if !c.HasUsername {
		return sc.AllowAnonymous
	}
	if sc.Passwd == nil {
		return false
	}
	_, ok := sc.Passwd.Fingerprint(user)
	return ok
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

// Records counts what the hook holds per client: identities by client
// id, and CONNECTs approved and not yet claimed.
func (h *Hook) Records() (identities, approved int) {
	h.ids.Range(func(any, any) bool { identities++; return true })
	h.mu.Lock()
	approved = len(h.approved)
	h.mu.Unlock()
	return identities, approved
}
