package limits

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/mochi"
)

// Events receives a count each time a limit refuses something.
type Events interface {
	LimitHit(limit string)
}

// Options configures New.
type Options struct {
	Server   *mqtt.Server
	Settings Settings
	// UsernameIsClientID: use_username_as_clientid is on, so the username
	// becomes the client id and is bounded like one.
	UsernameIsClientID bool
	Events             Events
	Logger             *slog.Logger
	// LogEvery is the shortest interval between two log lines for one
	// limit; refusals in between are counted in the next line.
	LogEvery time.Duration
	Now      func() time.Time
}

// Hook enforces Settings on CONNECT, SUBSCRIBE and PUBLISH. It also puts
// MQTT 3.1.1 CONNACKs right: mochi lets MQTT 5 reason codes (0x80, 0x82...)
// reach 3.1.1 clients on some refusal paths.
type Hook struct {
	mqtt.HookBase
	srv      *mqtt.Server
	set      Settings
	userIsID bool
	events   Events
	log      *slog.Logger
	logs     *logging.Limiter
	now      func() time.Time

	mu sync.Mutex
	// pending are authenticated CONNECTs admitted by the session count
	// but not yet in mochi's client list, so that simultaneous CONNECTs
	// are counted.
	pending map[*mqtt.Client]pendingConnect
	// retained: the owner of each retained topic and each owner's usage.
	owners map[string]retainedOwner
	usage  map[string]*retainedUsage
	// subacks holds SUBACK codes to put in place of mochi's for a client's
	// packet id (mochi answers a refused filter with 0x8F only).
	subacks map[*mqtt.Client]map[uint16][]byte
}

var _ mqtt.Hook = (*Hook)(nil)

type pendingConnect struct {
	user string
	at   time.Time
}

// pendingTTL drops pending entries of CONNECTs refused later (by the auth
// hook), which never reach OnSessionEstablished.
const pendingTTL = 30 * time.Second

type retainedOwner struct {
	user  string
	bytes int64
}

type retainedUsage struct {
	count int
	bytes int64
}

// unattributed owns retained messages restored from the store whose
// publisher is unknown, and the broker's own; it is never a username
// (usernames are UTF-8 without NUL) and is never refused.
const unattributed = "\x00restored"

// errRefused ends a CONNECT refused by a limit.
var errRefused = errors.New("connection refused by a resource limit")

// New builds the hook; add it with srv.AddHook(h, nil) before the auth hook.
func New(o Options) *Hook {
	h := &Hook{
		srv: o.Server, set: o.Settings, userIsID: o.UsernameIsClientID, events: o.Events, log: o.Logger, now: o.Now,
		pending: map[*mqtt.Client]pendingConnect{},
		owners:  map[string]retainedOwner{},
		usage:   map[string]*retainedUsage{},
		subacks: map[*mqtt.Client]map[uint16][]byte{},
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.now == nil {
		h.now = time.Now
	}
	every := o.LogEvery
	if every <= 0 {
		every = 10 * time.Second
	}
	h.logs = logging.NewLimiter(h.log, logging.LimitOptions{
		Burst: 1, Window: every, MaxKeys: 64, Now: h.now,
		Message: "repeated resource limit refusals not logged", KeyAttr: "limit",
	})
	return h
}

// ID implements mqtt.Hook.
func (h *Hook) ID() string { return "moat-limits" }

// Provides implements mqtt.Hook.
func (h *Hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnStarted, mqtt.OnConnect, mqtt.OnDisconnect,
		mqtt.OnSubscribe, mqtt.OnPublish, mqtt.OnRetainMessage, mqtt.OnRetainedExpired,
		mqtt.OnPacketEncode:
		return true
	}
	return false
}

// hit counts a refusal and logs it, a few lines per LogEvery per limit;
// the logging pipeline escapes and truncates the client's strings.
func (h *Hook) hit(limit string, cl *mqtt.Client, attrs ...any) {
	if h.events != nil {
		h.events.LimitHit(limit)
	}
	if !h.logs.Allow(limit) {
		return
	}
	args := []any{"remote", cl.Net.Remote, "limit", limit, "user", string(cl.Properties.Username), "client", cl.ID}
	h.log.Warn("resource limit reached", append(args, attrs...)...)
}

// refusal codes for a CONNECT: v3 0 means "close without CONNACK", as
// mosquitto does when 3.1.1 has no code for the reason.
type refusal struct{ v3, v5 byte }

var (
	refuseTooLarge    = refusal{v3: 0, v5: packets.ErrPacketTooLarge.Code}
	refuseClientID    = refusal{v3: 2, v5: packets.ErrClientIdentifierNotValid.Code}
	refuseWillTopic   = refusal{v3: 0, v5: packets.ErrTopicNameInvalid.Code}
	refuseQuota       = refusal{v3: 3, v5: packets.ErrQuotaExceeded.Code}
	refuseAuthMethod  = refusal{v3: 0, v5: packets.ErrBadAuthenticationMethod.Code}
	errTopicRefused   = errors.New("topic refused by a resource limit")
	errRetainedQuota  = errors.New("retained message refused by a per-user quota")
	errConnackNoMatch = errors.New("MQTT 3.1.1 has no CONNACK code for this refusal")
)

func (h *Hook) refuse(cl *mqtt.Client, r refusal) error {
	code := r.v5
	if cl.Properties.ProtocolVersion < 5 {
		code = r.v3
	}
	if code != 0 {
		_ = h.srv.SendConnack(cl, packets.Code{Code: code}, false, nil)
	}
	return errRefused
}

// OnConnect checks what costs nothing to check, before any password is
// verified: the authentication method, the CONNECT's size, the Will topic.
func (h *Hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.set
	if cl.Properties.ProtocolVersion == 5 && pk.Properties.AuthenticationMethod != "" {
		// Moat offers no enhanced authentication [MQTT-4.12.0-1].
		h.hit(LimitAuthMethod, cl, "method", pk.Properties.AuthenticationMethod)
		return h.refuse(cl, refuseAuthMethod)
	}
	if s.MaxConnectSize > 0 && pk.FixedHeader.Remaining > s.MaxConnectSize {
		h.hit(LimitConnectSize, cl, "size", pk.FixedHeader.Remaining)
		return h.refuse(cl, refuseTooLarge)
	}
	if pk.Connect.WillFlag {
		if l := s.CheckTopic(pk.Connect.WillTopic); l != "" {
			h.hit(l, cl, "will_topic_length", len(pk.Connect.WillTopic))
			return h.refuse(cl, refuseWillTopic)
		}
	}
	// mochi keeps the CONNECT's user properties with the session (and
	// the store would save them) although nothing reads them after the
	// CONNECT: drop them.
	cl.Properties.Props.User = nil
	return nil
}

// Sessions is the part of the hook that runs after the auth hook, on
// CONNECTs whose credentials were verified: the client-id length (the id
// is final then, use_username_as_clientid applied; a refused login is
// answered, counted and banned as such, whatever its id), a retained
// Will's quota and max_sessions_per_user. Nobody can fill another user's
// quotas with CONNECTs that fail authentication.
func (h *Hook) Sessions() mqtt.Hook { return &sessionHook{h: h} }

type sessionHook struct {
	mqtt.HookBase
	h *Hook
}

var _ mqtt.Hook = (*sessionHook)(nil)

// ID implements mqtt.Hook.
func (s *sessionHook) ID() string { return "moat-limits-sessions" }

// Provides implements mqtt.Hook.
func (s *sessionHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnSessionEstablished || b == mqtt.OnDisconnect
}

// OnConnect refuses an authenticated CONNECT over a per-client or
// per-user limit.
func (s *sessionHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	h := s.h
	if l := h.set.CheckClientID(cl.ID); l != "" {
		h.hit(l, cl, "length", len(cl.ID))
		return h.refuse(cl, refuseClientID)
	}
	if pk.Connect.WillFlag && pk.Connect.WillRetain && len(pk.Connect.WillPayload) > 0 {
		size := int64(len(pk.Connect.WillTopic) + len(pk.Connect.WillPayload))
		if l := h.retainedOver(string(cl.Properties.Username), pk.Connect.WillTopic, size); l != "" {
			h.hit(l, cl, "will_topic", pk.Connect.WillTopic)
			return h.refuse(cl, refuseQuota)
		}
	}
	if !h.admitSession(cl) {
		h.hit(LimitSessionsPerUser, cl)
		return h.refuse(cl, refuseQuota)
	}
	return nil
}

// OnSessionEstablished ends the client's pending entry: mochi lists it now.
func (s *sessionHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s.h.mu.Lock()
	delete(s.h.pending, cl)
	s.h.mu.Unlock()
}

// OnDisconnect drops the pending entry of a connection that ended.
func (s *sessionHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	s.h.mu.Lock()
	delete(s.h.pending, cl)
	s.h.mu.Unlock()
}

// admitSession counts the sessions of the client's username, live and
// offline, plus the authenticated CONNECTs admitted but not yet listed by
// mochi, and reserves a slot for cl when one is free. A client id already
// in use does not add a session: it replaces one.
func (h *Hook) admitSession(cl *mqtt.Client) bool {
	max := h.set.MaxSessionsPerUser
	if max <= 0 {
		return true
	}
	user := string(cl.Properties.Username)
	now := h.now()
	// Under h.mu, so a CONNECT moving from pending to listed (its entry
	// is deleted under h.mu after mochi lists it) is counted once.
	h.mu.Lock()
	defer h.mu.Unlock()
	all := h.srv.Clients.GetAll()
	if _, ok := all[cl.ID]; ok {
		return true
	}
	n := 0
	for _, c := range all {
		if !c.Net.Inline && string(c.Properties.Username) == user {
			n++
		}
	}
	for c, p := range h.pending {
		switch {
		case now.Sub(p.at) > pendingTTL || c.Closed():
			delete(h.pending, c)
		case p.user == user && c.ID != cl.ID:
			if _, listed := all[c.ID]; !listed {
				n++
			}
		}
	}
	if n >= max {
		return false
	}
	h.pending[cl] = pendingConnect{user: user, at: now}
	return true
}

// OnDisconnect drops what the hook held for the connection.
func (h *Hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	delete(h.subacks, cl)
	h.mu.Unlock()
}

// OnSubscribe replaces each filter a limit refuses by an empty filter,
// which mochi refuses (0x8F, 3.1.1 0x80) before any ACL check or topic
// tree work; filters over the subscription count get 0x97 under MQTT 5.
// Filters are never removed: mochi sizes the SUBACK from this list.
func (h *Hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	var codes []byte
	var filters []packets.Subscription
	held := cl.State.Subscriptions.Len()
	for i, sub := range pk.Filters {
		code := byte(0)
		if l := h.set.CheckTopic(sub.Filter); l != "" {
			h.hit(l, cl, "filter", sub.Filter, "length", len(sub.Filter), "levels", levelCount(sub.Filter))
			code = packets.ErrTopicFilterInvalid.Code
		} else if _, ok := cl.State.Subscriptions.Get(sub.Filter); !ok && h.set.MaxSubscriptions > 0 {
			if held >= h.set.MaxSubscriptions {
				h.hit(LimitSubscriptions, cl, "filter", sub.Filter, "held", held)
				code = packets.ErrQuotaExceeded.Code
			} else {
				held++
			}
		}
		if code == 0 {
			continue
		}
		if filters == nil {
			filters = append([]packets.Subscription(nil), pk.Filters...)
			codes = make([]byte, len(pk.Filters))
		}
		filters[i] = packets.Subscription{}
		codes[i] = code
	}
	if filters == nil {
		return pk
	}
	pk.Filters = filters
	if cl.Properties.ProtocolVersion == 5 {
		h.mu.Lock()
		m := h.subacks[cl]
		if m == nil {
			m = map[uint16][]byte{}
			h.subacks[cl] = m
		}
		m[pk.PacketID] = codes
		h.mu.Unlock()
	}
	return pk
}

// OnPublish refuses topics over the limits and retained messages over the
// publisher's quota, before they are retained, stored or delivered. MQTT 5
// QoS 1/2 gets 0x90 or 0x97; MQTT 3.1.1 has no refusal code, so its
// connection is closed (nothing is acknowledged); QoS 0 is dropped.
func (h *Hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if l := h.set.CheckTopic(pk.TopicName); l != "" {
		h.hit(l, cl, "topic", pk.TopicName, "length", len(pk.TopicName), "levels", levelCount(pk.TopicName))
		return pk, h.refusePublish(cl, pk, packets.ErrTopicNameInvalid, errTopicRefused)
	}
	if pk.FixedHeader.Retain && len(pk.Payload) > 0 {
		if l := h.retainedOver(string(cl.Properties.Username), pk.TopicName, int64(len(pk.TopicName)+len(pk.Payload))); l != "" {
			h.hit(l, cl, "topic", pk.TopicName)
			return pk, h.refusePublish(cl, pk, packets.ErrQuotaExceeded, errRetainedQuota)
		}
	}
	return pk, nil
}

func (h *Hook) refusePublish(cl *mqtt.Client, pk packets.Packet, code packets.Code, cause error) error {
	if cl.Properties.ProtocolVersion < 5 {
		cl.Stop(fmt.Errorf("publish to %s: %w", logging.Escape(pk.TopicName, logging.ClientStringMax), cause))
		return packets.ErrRejectPacket
	}
	switch pk.FixedHeader.Qos {
	case 1:
		return code
	case 2:
		// mochi would answer with a PUBACK even at QoS 2.
		_ = mochi.WriteAck(cl, pk, code.Code)
	}
	return packets.ErrRejectPacket
}

// retainedOver reports the per-user limit storing size bytes on topic
// would break, counting what the topic already holds for the same user.
func (h *Hook) retainedOver(user, topic string, size int64) string {
	s := h.set
	if s.MaxRetainedPerUser <= 0 && s.MaxRetainedBytesPerUser <= 0 {
		return ""
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var u retainedUsage
	if p := h.usage[user]; p != nil {
		u = *p
	}
	if o, ok := h.owners[topic]; ok && o.user == user {
		u.count--
		u.bytes -= o.bytes
	}
	switch {
	case s.MaxRetainedPerUser > 0 && u.count+1 > s.MaxRetainedPerUser:
		return LimitRetainedPerUser
	case s.MaxRetainedBytesPerUser > 0 && u.bytes+size > s.MaxRetainedBytesPerUser:
		return LimitRetainedBytesUser
	}
	return ""
}

// OnRetainMessage keeps the per-user retained accounting: r is 1 when
// stored, -1 when cleared.
func (h *Hook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	user := string(cl.Properties.Username)
	if cl.Net.Inline {
		user = unattributed // the broker's own messages count against nobody
	}
	switch r {
	case 1:
		h.setOwner(pk.TopicName, user, int64(len(pk.TopicName)+len(pk.Payload)))
	case -1:
		h.dropOwner(pk.TopicName)
	}
}

// OnRetainedExpired forgets an expired retained message.
func (h *Hook) OnRetainedExpired(topic string) { h.dropOwner(topic) }

// OnStarted attributes the retained messages restored from the store to
// the user of the stored session that published them, when known.
func (h *Hook) OnStarted() {
	clients := h.srv.Clients.GetAll()
	for topic, pk := range h.srv.Topics.Retained.GetAll() {
		user := unattributed
		if c, ok := clients[pk.Origin]; ok {
			user = string(c.Properties.Username)
		}
		h.setOwner(topic, user, int64(len(topic)+len(pk.Payload)))
	}
}

func (h *Hook) setOwner(topic, user string, size int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropOwnerLocked(topic)
	h.owners[topic] = retainedOwner{user: user, bytes: size}
	u := h.usage[user]
	if u == nil {
		u = &retainedUsage{}
		h.usage[user] = u
	}
	u.count++
	u.bytes += size
}

func (h *Hook) dropOwner(topic string) {
	h.mu.Lock()
	h.dropOwnerLocked(topic)
	h.mu.Unlock()
}

func (h *Hook) dropOwnerLocked(topic string) {
	o, ok := h.owners[topic]
	if !ok {
		return
	}
	delete(h.owners, topic)
	if u := h.usage[o.user]; u != nil {
		u.count--
		u.bytes -= o.bytes
		if u.count <= 0 {
			delete(h.usage, o.user)
		}
	}
}

// OnPacketEncode puts the SUBACK codes OnSubscribe decided in place, and
// keeps MQTT 3.1.1 CONNACKs within 3.1.1's return codes 0-5: mochi passes
// some MQTT 5 codes through (0x80 for a persistent session without a
// client id, 0x82 for protocol errors, 0x9A/0x9B for Will flags). A
// refusal 3.1.1 has no code for closes the connection without a CONNACK,
// as mosquitto does.
func (h *Hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Suback:
		h.mu.Lock()
		codes, ok := h.subacks[cl][pk.PacketID]
		if ok {
			delete(h.subacks[cl], pk.PacketID)
			if len(h.subacks[cl]) == 0 {
				delete(h.subacks, cl)
			}
		}
		h.mu.Unlock()
		if ok && len(codes) == len(pk.ReasonCodes) {
			rc := append([]byte(nil), pk.ReasonCodes...)
			for i, c := range codes {
				if c != 0 {
					rc[i] = c
				}
			}
			pk.ReasonCodes = rc
		}
	case packets.Connack:
		if cl.Properties.ProtocolVersion >= 5 || pk.ReasonCode <= 5 {
			return pk
		}
		code, ok := V3Connack(pk.ReasonCode, !cl.Properties.Clean && cl.Properties.Props.AssignedClientID != "")
		if !ok {
			cl.Stop(fmt.Errorf("CONNACK 0x%02x: %w", pk.ReasonCode, errConnackNoMatch))
			pk.FixedHeader.Type = packets.Reserved // encodes to nothing: no bytes are written
			return pk
		}
		pk.ReasonCode = code
		pk.Properties = packets.Properties{}
	}
	return pk
}

// V3Connack maps an MQTT 5 CONNACK reason code to the closest MQTT 3.1.1
// return code; ok is false when 3.1.1 has none and the connection should
// close without a CONNACK. noID is a persistent session asked for without
// a client id, which 3.1.1 answers with 2 [MQTT-3.1.3-8].
func V3Connack(v5 byte, noID bool) (code byte, ok bool) {
	switch v5 {
	case packets.ErrUnspecifiedError.Code:
		if noID {
			return 2, true
		}
		return 3, true
	case packets.ErrUnsupportedProtocolVersion.Code:
		return 1, true
	case packets.ErrClientIdentifierNotValid.Code:
		return 2, true
	case packets.ErrServerUnavailable.Code, packets.ErrServerBusy.Code, packets.ErrQuotaExceeded.Code,
		packets.ErrConnectionRateExceeded.Code, packets.ErrImplementationSpecificError.Code:
		return 3, true
	case packets.ErrBadUsernameOrPassword.Code:
		return 4, true
	case packets.ErrNotAuthorized.Code, packets.ErrBanned.Code:
		return 5, true
	}
	return 0, false
}
