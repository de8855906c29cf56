// Package metrics holds Moat's Prometheus metrics: a Metrics value registered
// on a registry the caller owns, plain methods the other parts call when
// something happens (auth failure, ACL denial, store commit, certificate
// change), and a mochi hook that counts connections, messages and bytes.
//
// Every method is safe on a nil *Metrics, so a part can be built without
// metrics (admin_listener off) and call them unconditionally.
package metrics

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "moat"

// Metrics is the set of moat_* metrics of one broker.
type Metrics struct {
	connections      *prometheus.GaugeVec
	messagesReceived *prometheus.CounterVec
	messagesSent     *prometheus.CounterVec
	messagesDropped  *prometheus.CounterVec
	bytesReceived    *prometheus.CounterVec
	bytesSent        *prometheus.CounterVec
	retained         prometheus.Gauge
	authFailures     *prometheus.CounterVec
	aclDenied        *prometheus.CounterVec
	bans             prometheus.Counter
	storeCommit      prometheus.Histogram
	certExpiry       *prometheus.GaugeVec
	certRenewalError prometheus.Gauge
	mounted          prometheus.Gauge
	limitRefusals    *prometheus.CounterVec
	refused          *prometheus.CounterVec
	memoryLimit      prometheus.Gauge

	// perListener maps a listener id to its pre-created children. Readers load
	// the map without locking; a new listener id copies the map under mu.
	perListener atomic.Pointer[map[string]*listenerMetrics]
	mu          sync.Mutex
}

// listenerMetrics are the children of one listener, resolved once so the
// packet hooks only do atomic adds.
type listenerMetrics struct {
	connections      prometheus.Gauge
	messagesReceived prometheus.Counter
	messagesSent     prometheus.Counter
	messagesDropped  prometheus.Counter
	bytesReceived    prometheus.Counter
	bytesSent        prometheus.Counter
}

// NewRegistry returns an empty registry with the Go runtime and process
// collectors, ready for New and for admin's /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// New creates Moat's metrics and registers them on reg. listeners are the
// listener ids known at start; their children are created now so that the
// series exist (at 0) before the first client arrives.
func New(reg prometheus.Registerer, listeners ...string) (*Metrics, error) {
	byListener := []string{"listener"}
	m := &Metrics{
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections",
			Help: "Clients connected now (authenticated sessions), by listener.",
		}, byListener),
		messagesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_received_total",
			Help: "PUBLISH packets received from clients, by listener.",
		}, byListener),
		messagesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_sent_total",
			Help: "PUBLISH packets sent to clients, by listener.",
		}, byListener),
		messagesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "messages_dropped_total",
			Help: "Messages dropped because the subscriber's outbound queue was full (slow consumer), by the subscriber's listener.",
		}, byListener),
		bytesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "bytes_received_total",
			Help: "MQTT packet bytes received from clients (whole packets, headers included), by listener.",
		}, byListener),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "bytes_sent_total",
			Help: "MQTT packet bytes sent to clients (whole packets, headers included), by listener.",
		}, byListener),
		retained: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "retained_messages",
			Help: "Retained messages held by the broker.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "auth_failures_total",
			Help: "Refused CONNECT authentications, by reason.",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "acl_denied_total",
			Help: "ACL denials, by operation.",
		}, []string{"op"}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "bans_total",
			Help: "Temporary bans imposed by brute-force protection.",
		}),
		storeCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "store_commit_seconds",
			Help:    "Duration of durable store commits.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100µs .. ~26s
		}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the certificate served, as Unix time, by certificate name.",
		}, []string{"name"}),
		certRenewalError: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "certificate_renewal_error",
			Help: "1 while the last certificate renewal attempt failed, else 0.",
		}),
		mounted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "persistence_mounted",
			Help: "1 while the encrypted persistence directory is mounted and verified, else 0.",
		}),
		limitRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "limit_refusals_total",
			Help: "CONNECTs, subscriptions and publishes refused by a resource limit, by the setting that refused them.",
		}, []string{"limit"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_refused_total",
			Help: "Connections refused by a broker limit (not by authentication), by limit: memory_limit, max_connections, max_connections_per_ip, max_connection_rate_per_ip.",
		}, []string{"limit"}),
		memoryLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "memory_limit_bytes",
			Help: "Live memory at which new connections are refused (90% of memory_limit or of the container's limit); 0 when there is none.",
		}),
	}
	for _, c := range []prometheus.Collector{
		m.connections, m.messagesReceived, m.messagesSent, m.messagesDropped, m.bytesReceived, m.bytesSent,
		m.retained, m.authFailures, m.aclDenied, m.bans, m.storeCommit, m.certExpiry,
		m.certRenewalError, m.mounted, m.limitRefusals, m.refused, m.memoryLimit,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, limit := range RefusalLimits {
		m.refused.WithLabelValues(limit) // the series exist at 0
	}
	empty := map[string]*listenerMetrics{}
	m.perListener.Store(&empty)
	for _, id := range listeners {
		m.listener(id)
	}
	return m, nil
}

// listener returns the children for a listener id, creating them on first use.
func (m *Metrics) listener(id string) *listenerMetrics {
	if lm, ok := (*m.perListener.Load())[id]; ok {
		return lm
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.perListener.Load()
	if lm, ok := old[id]; ok {
		return lm
	}
	lm := &listenerMetrics{
		connections:      m.connections.WithLabelValues(id),
		messagesReceived: m.messagesReceived.WithLabelValues(id),
		messagesSent:     m.messagesSent.WithLabelValues(id),
		messagesDropped:  m.messagesDropped.WithLabelValues(id),
		bytesReceived:    m.bytesReceived.WithLabelValues(id),
		bytesSent:        m.bytesSent.WithLabelValues(id),
	}
	next := make(map[string]*listenerMetrics, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[id] = lm
	m.perListener.Store(&next)
	return lm
}

// AuthFailure counts a refused authentication. reason must come from a fixed
// set chosen by the caller (e.g. "bad_credentials", "banned", "rate_limited"),
// never from client input, to keep the label's cardinality bounded.
func (m *Metrics) AuthFailure(reason string) {
	if m == nil {
		return
	}
	m.authFailures.WithLabelValues(reason).Inc()
}

// ACLDenied counts an ACL denial. op is a fixed word such as "publish",
// "subscribe", "deliver" or "will".
func (m *Metrics) ACLDenied(op string) {
	if m == nil {
		return
	}
	m.aclDenied.WithLabelValues(op).Inc()
}

// LimitHit counts a refusal by a resource limit. limit is the name of the
// setting (e.g. "max_topic_length"), never client input.
func (m *Metrics) LimitHit(limit string) {
	if m == nil {
		return
	}
	m.limitRefusals.WithLabelValues(limit).Inc()
}

// RefusalLimits are the limit labels of moat_connections_refused_total.
var RefusalLimits = []string{"memory_limit", "max_connections", "max_connections_per_ip", "max_connection_rate_per_ip"}

// ConnectionRefused counts a connection a limit refused. limit is a fixed
// word (the setting's name), never client input.
func (m *Metrics) ConnectionRefused(limit string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(limit).Inc()
}

// SetMemoryLimit records the live-memory threshold of admission (0: none).
func (m *Metrics) SetMemoryLimit(bytes int64) {
	if m == nil {
		return
	}
	m.memoryLimit.Set(float64(bytes))
}

// Ban counts a temporary ban.
func (m *Metrics) Ban() {
	if m == nil {
		return
	}
	m.bans.Inc()
}

// StoreCommit records how long one durable store commit took.
func (m *Metrics) StoreCommit(d time.Duration) {
	if m == nil {
		return
	}
	m.storeCommit.Observe(d.Seconds())
}

// CertExpiry records the NotAfter of the certificate served under name
// (usually its domain).
func (m *Metrics) CertExpiry(name string, notAfter time.Time) {
	if m == nil {
		return
	}
	m.certExpiry.WithLabelValues(name).Set(float64(notAfter.Unix()))
}

// CertRenewalError sets (true) or clears (false) the renewal-failure flag.
func (m *Metrics) CertRenewalError(set bool) {
	if m == nil {
		return
	}
	m.certRenewalError.Set(boolFloat(set))
}

// MountState records whether the encrypted persistence directory is mounted.
func (m *Metrics) MountState(up bool) {
	if m == nil {
		return
	}
	m.mounted.Set(boolFloat(up))
}

// SetRetained sets the retained-message gauge; the hook does this on every
// $SYS tick, the store may do it after a restore.
func (m *Metrics) SetRetained(n int) {
	if m == nil {
		return
	}
	m.retained.Set(float64(n))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
