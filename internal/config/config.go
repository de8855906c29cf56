// Package config reads mosquitto.conf syntax, mosquitto's directives and
// Moat's own settings, into one typed, validated Config.
//
// The rules follow mosquitto 2.0: a directive per line, "name value", a
// comment when the line starts with '#', booleans exactly true or false,
// unknown directives are errors, listener-scoped directives follow the most
// recent listener line, include_dir loads *.conf in sorted order. Every error
// names file:line. Values that may be secrets are never quoted in errors.
package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Pos is where a directive was read.
type Pos struct {
	File string
	Line int
}

func (p Pos) String() string {
	if p.File == "" {
		return "(default)"
	}
	return fmt.Sprintf("%s:%d", p.File, p.Line)
}

// Config is a whole, validated configuration.
type Config struct {
	// Files lists every configuration file read, in order.
	Files []string

	Listeners []*Listener
	// PerListenerSettings makes authentication settings per listener
	// (mosquitto's per_listener_settings).
	PerListenerSettings bool
	// Security holds the global authentication settings; with
	// PerListenerSettings each listener has its own.
	Security *Security

	Limits      Limits
	Persistence Persistence
	Log         Log
	ACME        ACME
	Admin       Admin
	Abuse       Abuse
	Memory      Memory

	// Quotas bound what one client or one user may make the broker hold.
	Quotas  Quotas
	Cluster Cluster

	// StrictSubscribe refuses subscription filters not covered by a read
	// rule (Moat's default); false restores mosquitto's grant-and-filter.
	StrictSubscribe bool
	// CheckRetainSource re-checks that a retained message's publisher may
	// still write its topic before delivering it.
	CheckRetainSource bool
	// UseUsernameAsClientID replaces client ids by usernames.
	UseUsernameAsClientID bool
	// PersistentClientExpiration removes persistent sessions unused this long (0 = never).
	PersistentClientExpiration time.Duration
	// SysInterval is the $SYS update period.
	SysInterval time.Duration
	// User is accepted for compatibility; Moat does not switch users itself.
	User string

	// LocalOnly is true when no listener was configured: Moat then listens
	// on 127.0.0.1:1883 only, like mosquitto's local-only mode.
	LocalOnly bool

	// Warnings are non-fatal findings for check-config and the start-up log.
	Warnings []string

	// Settings lists every directive line read, in order: a reload compares
	// them to decide what it may apply (see RestartRequired).
	Settings []Setting
}

// Security is authentication and authorisation for one scope.
type Security struct {
	AllowAnonymous    bool
	allowAnonymousSet bool
	PasswordFile      string
	PasswordFilePos   Pos
	ACLFile           string
	ACLFilePos        Pos
}

// Listener is one listener line and the settings that follow it.
type Listener struct {
	Pos Pos
	// ID names the listener in logs and metrics, e.g. "mqtt:1883".
	ID           string
	Port         int
	Bind         string // empty: all interfaces
	UnixPath     string // set for a Unix socket (port 0)
	SocketDomain string // "", "ipv4" or "ipv6"
	Protocol     string // "mqtt" or "websockets"
	// Implicit is true for the listener made by port/bind_address or by
	// local-only mode rather than by a listener line.
	Implicit bool

	TLS TLS

	MaxConnections      int // -1: unlimited
	MaxConnectionsPerIP int // 0: unlimited
	ConnectRatePerIP    float64
	ConnectTimeout      time.Duration
	WebSocketPath       string
	WebSocketOrigins    []string
	TrustedProxies      []netip.Prefix

	// Security is the listener's own with per_listener_settings, else the global one.
	Security *Security
}

// TLS is a listener's TLS configuration.
type TLS struct {
	CertFile, KeyFile      string
	CAFile, CAPath         string
	Version                string // minimum: "tlsv1.2" or "tlsv1.3"
	RequireCertificate     bool
	UseIdentityAsUsername  bool
	UseSubjectAsUsername   bool
	ACME                   bool // "tls acme": serve the ACME certificate
	certPos, keyPos, acPos Pos
}

// Enabled reports whether the listener speaks TLS.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.ACME }

// Limits are broker-wide limits.
type Limits struct {
	MaxPacketSize       uint32 // whole packet; Moat default 1 MiB
	MessageSizeLimit    uint32 // payload; 0 = none
	MaxKeepalive        uint16 // also the keepalive given to clients asking for 0
	MaxInflightMessages int
	MaxQueuedMessages   int
	MaxQoS              byte
	RetainAvailable     bool
}

// Quotas are per-client and per-user resource limits (Moat's own
// settings; mosquitto has none of them). 0 disables a limit where the
// directive allows it.
type Quotas struct {
	MaxTopicLength          int   // topic names and filters, bytes
	MaxTopicLevels          int   // levels of a topic or filter
	MaxClientIDLength       int   // bytes
	MaxConnectSize          int   // CONNECT packet after the fixed header, bytes
	MaxSubscriptions        int   // per session
	MaxSessionsPerUser      int   // live and offline sessions of one username
	MaxRetainedPerUser      int   // retained messages one user has published
	MaxRetainedBytesPerUser int64 // their topic and payload bytes
	MaxQueuedBytes          int64 // queued for one offline session (mosquitto's max_queued_bytes)
	MaxQueuedPerUser        int   // messages queued for one user's offline sessions
}

// storeMaxKey is the store's largest key (bbolt): a session key is the
// client id, a length prefix of up to 3 bytes and a filter.
const storeMaxKey = 32768

// Memory: what the broker may use and what happens near it.
type Memory struct {
	// Limit is memory_limit in bytes: the Go runtime's soft limit
	// (GOMEMLIMIT) is set to 90% of it, and new connections are refused
	// once live memory reaches that. 0 = the container's cgroup limit, if
	// any.
	Limit int64
	Pos   Pos
}

// MinMemoryLimit is the smallest memory_limit accepted: below it the
// broker would refuse every connection.
const MinMemoryLimit = 32 << 20

// Persistence configures the durable store.
type Persistence struct {
	Enabled  bool
	Location string // the plaintext directory (the gocryptfs mount point)
	File     string
	// AutosaveInterval and AutosaveOnChanges are accepted for compatibility;
	// Moat saves every message.
	AutosaveInterval  int
	AutosaveOnChanges bool
	Encryption        string // "gocryptfs" (default) or "off"
	CipherDir         string
	KeyFile           string
	GocryptfsPath     string
	Pos               Pos
}

// Encrypted reports whether the store lives inside a gocryptfs mount.
func (p Persistence) Encrypted() bool { return p.Enabled && p.Encryption != "off" }

// Log configures logging.
type Log struct {
	Dests              []LogDest
	Types              map[string]bool // log_type values; empty means the default set
	ConnectionMessages bool
	Timestamp          bool
	Format             string // "text" or "json"
}

// LogDest is one log_dest line.
type LogDest struct {
	Kind string // stdout, stderr, file, syslog, topic, dlt, none
	Path string
}

// ACME configures automatic certificates.
type ACME struct {
	Domains               []string
	Email                 string
	Staging               bool
	stagingSet            bool
	Directory             string
	Profile               string
	KeyType               string
	DNSResolvers          []string
	PropagationCheck      bool
	StateDir              string
	CloudflareCredentials string
}

// Admin configures the admin HTTP listener.
type Admin struct {
	Listener string // "" when off
	Pos      Pos    // of the admin_listener line; zero for the default
	// CertMinDays: /readyz fails when the served certificate expires sooner.
	CertMinDays int
}

// Abuse configures brute-force protection.
type Abuse struct {
	// Brute-force bans. BanThreshold failures for one user from one
	// network (4x for the network as a whole) start exponential backoff
	// bans, from BanBase doubling up to BanMax. Addresses are grouped into
	// networks by BanIPv4Prefix / BanIPv6Prefix bits.
	BanThreshold  int
	BanBase       time.Duration
	BanMax        time.Duration
	BanIPv4Prefix int
	BanIPv6Prefix int
}
