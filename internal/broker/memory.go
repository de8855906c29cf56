package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/logging"
	"github.com/moat-mqtt/moat/internal/memlimit"
	"github.com/moat-mqtt/moat/internal/metrics"
)

// Per-connection sizes given to mochi. mochi allocates each client's
// outbound queue at its full capacity when the connection is accepted (8
// bytes a slot), so its size is what an idle connection costs; its read
// buffer too. mochi's write buffer is allocated only while writes queue up.
const (
	// defaultQueue is the outbound queue when max_queued_messages is 0
	// (mosquitto: unlimited; mochi cannot grow a queue).
	defaultQueue = 8192
	// minQueue keeps a tiny max_queued_messages from dropping the
	// messages of an ordinary burst.
	minQueue = 16
	maxQueue = 1 << 16
	// readBuffer holds a CONNECT or a small PUBLISH whole; larger packets
	// are read through it.
	readBuffer = 1024
	// writeBuffer: queued writes are gathered up to this size per write
	// call.
	writeBuffer = 2048
)

// outboundQueue returns the size of mochi's per-client outbound queue:
// max_queued_messages, as mosquitto counts a client's queued messages.
func outboundQueue(cfg *config.Config) int {
	n := cfg.Limits.MaxQueuedMessages
	if n <= 0 {
		return defaultQueue
	}
	return min(max(n, minQueue), maxQueue)
}

// Retained messages sent on subscribe wait for the subscriber's queue
// once it is fuller than retainedHigh (fraction of the queue) until it is
// down to retainedLow: a subscription matching more retained messages
// than the queue holds gets all of them, and live messages keep room.
const (
	retainedHigh = 0.75
	retainedLow  = 0.5
	// retainedStall gives up waiting when the queue has not moved for this
	// long: the client stopped reading and its writes time out anyway.
	retainedStall = 15 * time.Second
)

// memoryGuard is the mochi hook for per-connection memory: it refuses new
// connections once live memory reaches the limit, paces retained messages
// sent on subscribe through the subscriber's bounded queue, and logs what
// a full queue drops.
type memoryGuard struct {
	mqtt.HookBase
	srv   *mqtt.Server
	met   *metrics.Metrics
	log   *slog.Logger
	quiet *logging.Limiter
	queue queueLen

	// limit is the live memory at which connections are refused; 0 = none.
	limit int64
	// used caches the last sample for a few milliseconds: a connect
	// storm samples the runtime a few hundred times a second, not per
	// CONNECT.
	mu       sync.Mutex
	usage    *memlimit.Usage
	sampled  atomic.Int64 // unix ns of the last sample
	used     atomic.Int64
	interval time.Duration
}

func newMemoryGuard(srv *mqtt.Server, met *metrics.Metrics, log *slog.Logger, limit int64) (*memoryGuard, error) {
	q, err := newQueueLen()
	if err != nil {
		return nil, err
	}
	return &memoryGuard{
		srv: srv, met: met, log: log, queue: q, limit: limit,
		usage: memlimit.NewUsage(), interval: 5 * time.Millisecond,
		quiet: logging.NewLimiter(log, logging.LimitOptions{
			Burst: 5, Window: 10 * time.Second,
			Message: "repeated limit lines not logged", KeyAttr: "limit",
		}),
	}, nil
}

func (g *memoryGuard) ID() string { return "moat-memory" }

func (g *memoryGuard) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect:
		return g.limit > 0
	case mqtt.OnRetainPublished, mqtt.OnPublishDropped:
		return true
	}
	return false
}

var errMemoryLimit = errors.New("memory limit reached")

// inUse is the live memory, sampled at most once per interval.
func (g *memoryGuard) inUse() int64 {
	now := time.Now().UnixNano()
	if now-g.sampled.Load() < int64(g.interval) {
		return g.used.Load()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if now-g.sampled.Load() >= int64(g.interval) {
		g.used.Store(g.usage.Bytes())
		g.sampled.Store(now)
	}
	return g.used.Load()
}

// OnConnect refuses a new connection while live memory is at the limit:
// MQTT 5 CONNACK 0x97 (quota exceeded), 3.1.1 code 3 (server
// unavailable). Clients already connected keep their sessions.
func (g *memoryGuard) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	used := g.inUse()
	if used < g.limit {
		return nil
	}
	g.met.ConnectionRefused("memory_limit")
	if g.quiet.Allow("memory_limit") {
		g.log.Warn("connection refused: memory limit reached", "listener", cl.Net.Listener, "remote", cl.Net.Remote,
			"in_use_bytes", used, "limit_bytes", g.limit)
	}
	code := packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "quota exceeded: broker memory limit reached"}
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Code{Code: packets.Err3ServerUnavailable.Code}
	}
	_ = g.srv.SendConnack(cl, code, false, nil)
	return errMemoryLimit
}

// OnRetainPublished runs on the subscriber's own goroutine after each
// retained message mochi queued for a new subscription: when the queue
// is filling it waits for the writer to drain it, so that the next
// retained messages are not dropped (mochi drops what does not fit).
func (g *memoryGuard) OnRetainPublished(cl *mqtt.Client, _ packets.Packet) {
	if cl.Net.Inline || cl.Net.Conn == nil {
		return
	}
	n, c := g.queue.of(cl)
	if c == 0 || float64(n) < retainedHigh*float64(c) {
		return
	}
	low := int(retainedLow * float64(c))
	wait := time.Millisecond
	last, moved := n, time.Now()
	for n > low && !cl.Closed() {
		time.Sleep(wait)
		wait = min(2*wait, 20*time.Millisecond)
		if n, _ = g.queue.of(cl); n < last {
			last, moved = n, time.Now()
		} else if time.Since(moved) > retainedStall {
			return
		}
	}
}

// OnPublishDropped logs a message a full queue dropped (the metrics hook
// counts it), a few lines per window.
func (g *memoryGuard) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if g.quiet.Allow("max_queued_messages") {
		g.log.Warn("message dropped: subscriber queue full (max_queued_messages)", "listener", cl.Net.Listener,
			"client", cl.ID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos)
	}
}

// queueLen reads the length and capacity of mochi's per-client outbound
// queue, which mochi does not export. mochi is pinned; newQueueLen fails
// at start if the field is not there.
type queueLen struct{ index []int }

func newQueueLen() (queueLen, error) {
	state, ok := reflect.TypeFor[mqtt.Client]().FieldByName("State")
	if !ok {
		return queueLen{}, errors.New("mqtt.Client has no State")
	}
	out, ok := state.Type.FieldByName("outbound")
	if !ok || out.Type.Kind() != reflect.Chan {
		return queueLen{}, fmt.Errorf("mqtt.ClientState has no outbound queue")
	}
	return queueLen{index: append(append([]int{}, state.Index...), out.Index...)}, nil
}

func (q queueLen) of(cl *mqtt.Client) (n, capacity int) {
	v := reflect.ValueOf(cl).Elem().FieldByIndex(q.index)
	return v.Len(), v.Cap()
}
