// Package broker builds Moat from a Config: the mochi server, the auth,
// store and metrics hooks, the hardened listeners with their certificates,
// the encrypted store and the admin listener; it starts them in order,
// applies reloads and stops them in reverse order.
package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/moat-mqtt/moat/internal/admin"
	"github.com/moat-mqtt/moat/internal/auth"
	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/limits"
	"github.com/moat-mqtt/moat/internal/listen"
	"github.com/moat-mqtt/moat/internal/metrics"
	"github.com/moat-mqtt/moat/internal/mochi"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// Options configures a Broker.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Env reads the environment (os.Getenv); tests inject.
	Env func(string) string
	// Load reads the configuration again for a reload; nil reloads only the
	// files the configuration names (the embedded default has no file).
	Load func() (*config.Config, error)
	// Logs prepares the logging a reloaded configuration asks for (opening
	// its files) and returns what puts it in force; nil: log settings need a
	// restart.
	Logs func(*config.Config) (apply func(), err error)
	// MemoryAdmit is the live memory from which new connections are
	// refused (memlimit.Plan.Admit); 0 = never.
	MemoryAdmit int64
}

// Broker is a running Moat.
type Broker struct {
	cfg     *config.Config
	log     *slog.Logger
	env     func(string) string
	srv     *mqtt.Server
	auth    *auth.Hook
	reg     *prometheus.Registry
	met     *metrics.Metrics
	admin   *admin.Server
	persist *persistence
	expiry  *retainedExpiry
	queues  *limits.Queues
	cluster *clusterNode // nil unless cluster_nats is set

	ctx       context.Context
	cancel    context.CancelFunc
	run       group     // every background goroutine
	closeOnce sync.Once // mochi panics on a second Close

	load func() (*config.Config, error)
	logs func(*config.Config) (func(), error)
	// watchEvery and stopWatch are the file watch (guarded by mu).
	watchEvery time.Duration
	stopWatch  context.CancelFunc
	watched    []string
	// live is the configuration in force: cfg as started, plus what
	// reloads applied (the two differ only in Live directives).
	live         *config.Config
	connMessages atomic.Bool

	certMu  sync.RWMutex                  // guards files and watches
	files   map[string]*certs.FileSource  // by listener id
	watches map[string]context.CancelFunc // by listener id
	acme    *certs.Manager

	mu        sync.Mutex // guards listeners and reloads
	listeners map[string]*listen.Listener
	pending   []*config.Listener // TLS acme listeners waiting for a certificate
}

// New provisions everything that can fail before anything starts: the
// policy files, the certificates, the mochi server and its hooks.
func New(o Options) (*Broker, error) {
	cfg := o.Config
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	env := o.Env
	if env == nil {
		env = func(string) string { return "" }
	}
	if err := checkUsers(cfg); err != nil {
		return nil, err
	}
	policy, sums, err := LoadPolicy(cfg)
	if err != nil {
		return nil, err
	}
	// Refuse a bad key file or mount point before anything is built, with
	// the message check-config gives.
	if err := checkPersistence(cfg, env); err != nil {
		return nil, err
	}
	for _, s := range sums {
		for _, w := range s.Warnings {
			log.Warn(w)
		}
	}
	b := &Broker{cfg: cfg, live: cfg, load: o.Load, logs: o.Logs, log: log, env: env, files: map[string]*certs.FileSource{},
		watches: map[string]context.CancelFunc{}, listeners: map[string]*listen.Listener{}}
	b.connMessages.Store(cfg.Log.ConnectionMessages)
	b.ctx, b.cancel = context.WithCancel(context.Background())

	b.reg = metrics.NewRegistry()
	ids := make([]string, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ids = append(ids, l.ID)
	}
	if b.met, err = metrics.New(b.reg, ids...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := metrics.RegisterRecords(b.reg, b.recordCounts); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}

	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:             capabilities(cfg),
		ClientNetReadBufferSize:  readBuffer,
		ClientNetWriteBufferSize: writeBuffer,
		Logger:                   log.With("component", "mqtt"),
		SysTopicResendInterval:   int64(max(cfg.SysInterval/time.Second, 1)),
	})
	if err := mochi.Verify(b.srv); err != nil {
		return nil, err
	}
	b.met.SetMemoryLimit(o.MemoryAdmit)
	memory, err := newMemoryGuard(b.srv, b.met, log.With("component", "memory"), o.MemoryAdmit)
	if err != nil {
		return nil, fmt.Errorf("memory hook: %w", err)
	}
	// Before the auth hook: a refusal at the memory limit costs no
	// password verification. It decides no authentication or ACL.
	if err := b.srv.AddHook(memory, nil); err != nil {
		return nil, fmt.Errorf("memory hook: %w", err)
	}
	// The limits hook comes next: its refusals are cheap and come before
	// any password verification. It never allows anything.
	lim := limits.New(limits.Options{
		Server:             b.srv,
		Settings:           limitSettings(cfg),
		UsernameIsClientID: cfg.UseUsernameAsClientID,
		Events:             b.met,
		Logger:             log.With("component", "limits"),
	})
	queues := lim.Queues()
	b.auth = auth.New(auth.Options{
		Server:   b.srv,
		Policy:   policy,
		Verifier: passwd.NewVerifier(2, 8192),
		Bans: auth.BanOptions{
			Threshold:  cfg.Abuse.BanThreshold,
			Base:       cfg.Abuse.BanBase,
			Max:        cfg.Abuse.BanMax,
			IPv4Prefix: cfg.Abuse.BanIPv4Prefix,
			IPv6Prefix: cfg.Abuse.BanIPv6Prefix,
		},
		Events:   b.met,
		Logger:   log.With("component", "auth"),
		Context:  b.ctx,
		MayQueue: queues.MayQueue,
	})
	if err := b.srv.AddHook(lim, nil); err != nil {
		return nil, fmt.Errorf("limits hook: %w", err)
	}
	// The auth hook alone decides authentication and ACLs; no permissive
	// hook is ever added (mochi ORs them).
	if err := b.srv.AddHook(b.auth, nil); err != nil {
		return nil, fmt.Errorf("auth hook: %w", err)
	}
	// Sessions per user are counted once the credentials are verified.
	if err := b.srv.AddHook(lim.Sessions(), nil); err != nil {
		return nil, fmt.Errorf("limits session hook: %w", err)
	}
	if err := b.srv.AddHook(queues, nil); err != nil {
		return nil, fmt.Errorf("queue quota hook: %w", err)
	}
	b.queues = queues
	if err := b.srv.AddHook(b.auth.DeliveryGuard(), nil); err != nil {
		return nil, fmt.Errorf("delivery guard hook: %w", err)
	}
	if err := b.srv.AddHook(metrics.NewHook(b.met, metrics.RetainedCount(b.srv)), nil); err != nil {
		return nil, fmt.Errorf("metrics hook: %w", err)
	}
	if err := mochi.StopRetainedSweep(b.srv); err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	// Always added: connection_messages can be turned on by a reload.
	if err := b.srv.AddHook(&connLog{log: log.With("component", "mqtt"), on: &b.connMessages}, nil); err != nil {
		return nil, fmt.Errorf("connection log hook: %w", err)
	}
	if err := b.srv.AddHook(&mochi.PacketIDs{}, nil); err != nil {
		return nil, fmt.Errorf("packet id hook: %w", err)
	}
	if err := b.srv.AddHook(&mochi.SubscriptionIDs{}, nil); err != nil {
		return nil, fmt.Errorf("subscription identifier hook: %w", err)
	}
	if err := b.srv.AddHook(&mochi.Wire{}, nil); err != nil {
		return nil, fmt.Errorf("wire hook: %w", err)
	}
	b.expiry = &retainedExpiry{srv: b.srv}
	if err := b.srv.AddHook(b.expiry, nil); err != nil {
		return nil, fmt.Errorf("expiry hook: %w", err)
	}
	if err := b.newCluster(); err != nil {
		b.cancel()
		return nil, err
	}
	if err := b.provisionCerts(); err != nil {
		b.cancel()
		return nil, err
	}
	return b, nil
}

// capabilities maps the configuration onto mochi's capabilities, closing
// mochi's unsafe defaults: unlimited packets, retained messages that expire
// after a day, topic aliases that reach the ACL as "" (mochi never
// advertises them anyway). The outbound queue holds max_queued_messages
// (mochi allocates it whole for every connection, and after churn the
// reused memory is all touched): a subscription's retained messages,
// which can outnumber it, are paced through it (memoryGuard).
func capabilities(cfg *config.Config) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = cfg.Limits.MaxPacketSize
	c.MaximumMessageExpiryInterval = 0
	c.MaximumClientWritesPending = int32(outboundQueue(cfg))
	c.TopicAliasMaximum = 0
	c.MaximumQos = cfg.Limits.MaxQoS
	if !cfg.Limits.RetainAvailable {
		c.RetainAvailable = 0
	}
	if n := cfg.Limits.MaxQueuedMessages; n > 0 && n < 65535 {
		c.MaximumInflight = uint16(n)
	}
	if n := cfg.Limits.MaxInflightMessages; n > 0 && n < 65535 {
		c.ReceiveMaximum = uint16(n)
	}
	if d := cfg.PersistentClientExpiration; d > 0 {
		c.MaximumSessionExpiryInterval = uint32(min(d/time.Second, 1<<32-1))
	}
	c.MinimumProtocolVersion = 3
	// An ack echoing the PUBLISH's user properties would reflect whatever
	// a client sends back at it.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}

// limitSettings are the quota settings for the limits hook.
func limitSettings(cfg *config.Config) limits.Settings {
	q := cfg.Quotas
	return limits.Settings{
		MaxTopicLength:          q.MaxTopicLength,
		MaxTopicLevels:          q.MaxTopicLevels,
		MaxClientIDLength:       q.MaxClientIDLength,
		MaxConnectSize:          q.MaxConnectSize,
		MaxSubscriptions:        q.MaxSubscriptions,
		MaxSessionsPerUser:      q.MaxSessionsPerUser,
		MaxRetainedPerUser:      q.MaxRetainedPerUser,
		MaxRetainedBytesPerUser: q.MaxRetainedBytesPerUser,
		MaxQueuedBytes:          q.MaxQueuedBytes,
		MaxQueuedPerUser:        q.MaxQueuedPerUser,
	}
}

// Server exposes the mochi server (tests, the persistence wiring).
func (b *Broker) Server() *mqtt.Server { return b.srv }

// Registry is the Prometheus registry the admin listener serves.
func (b *Broker) Registry() *prometheus.Registry { return b.reg }

// Start mounts and restores the store, opens the listeners that have what
// they need, starts the admin listener and the certificate loops.
func (b *Broker) Start() error {
	if err := b.startPersistence(); err != nil {
		b.cancel()
		return err
	}
	b.expiry.loadRestored()
	b.queues.Recount(b.srv) // sessions restored from the store
	if err := b.startCluster(); err != nil {
		b.Close(context.Background())
		return err
	}
	b.run.goNamed("retained expiry", func() { b.expiry.run(b.ctx) })
	for _, l := range b.cfg.Listeners {
		if l.TLS.ACME && !b.acmeReady() {
			b.pending = append(b.pending, l)
			continue
		}
		if err := b.addListener(l); err != nil {
			b.Close(context.Background())
			return err
		}
	}
	if err := b.srv.Serve(); err != nil {
		b.Close(context.Background())
		return fmt.Errorf("start: %w", err)
	}
	if err := b.startAdmin(); err != nil {
		b.Close(context.Background())
		return err
	}
	b.startCertLoops()
	return nil
}

func (b *Broker) listenOptions(l *config.Listener) (listen.Options, error) {
	o := listen.Options{
		ID:             l.ID,
		WebSocket:      l.Protocol == "websockets",
		ConnectTimeout: l.ConnectTimeout,
		MaxPacketSize:  int(b.cfg.Limits.MaxPacketSize),
		WebSocketPath:  l.WebSocketPath,
		Origins:        l.WebSocketOrigins,
		TrustedProxies: l.TrustedProxies,
		Logger:         b.log, // listen names the listener on each line itself
		OnPanic:        b.cleanupPanicked,
		CloseClients:   b.closeListenerClients,
		OnRefused:      b.met.ConnectionRefused,
	}
	o.MaxConnections, o.MaxConnectionsPerIP, o.ConnectRate, o.ConnectBurst = connLimits(l)
	if l.UnixPath != "" {
		o.Network, o.Address = "unix", l.UnixPath
	} else {
		o.Network = "tcp"
		switch l.SocketDomain {
		case "ipv4":
			o.Network = "tcp4"
		case "ipv6":
			o.Network = "tcp6"
		}
		o.Address = net.JoinHostPort(l.Bind, strconv.Itoa(l.Port))
	}
	if l.TLS.Enabled() {
		cfg, err := b.tlsConfig(l)
		if err != nil {
			return o, err
		}
		o.TLS = cfg
	}
	return o, nil
}

// connLimits are a listener's connection limits as listen takes them.
func connLimits(l *config.Listener) (maxConns, perIP int, r rate.Limit, burst int) {
	maxConns, perIP = max(l.MaxConnections, 0), l.MaxConnectionsPerIP
	if l.ConnectRatePerIP > 0 {
		r, burst = rate.Limit(l.ConnectRatePerIP), max(int(l.ConnectRatePerIP), 10)
	}
	return maxConns, perIP, r, burst
}

// applyLimits puts a reloaded configuration's connection limits in force on
// the open listeners and on those still waiting for a certificate.
func (b *Broker) applyLimits(cfg *config.Config) {
	byID := map[string]*config.Listener{}
	for _, l := range cfg.Listeners {
		byID[l.ID] = l
		if ln, ok := b.listeners[l.ID]; ok {
			ln.SetLimits(connLimits(l))
		}
	}
	for i, l := range b.pending {
		if n, ok := byID[l.ID]; ok {
			b.pending[i] = n
		}
	}
}

func (b *Broker) addListener(l *config.Listener) error {
	o, err := b.listenOptions(l)
	if err != nil {
		return err
	}
	ln, err := listen.New(o)
	if err != nil {
		return fmt.Errorf("listener %s (%s): %w", l.ID, l.Pos, err)
	}
	if err := b.srv.AddListener(ln); err != nil {
		return fmt.Errorf("listener %s (%s): %w", l.ID, l.Pos, err)
	}
	b.mu.Lock()
	b.listeners[l.ID] = ln
	b.mu.Unlock()
	return nil
}

// Addr returns the bound address of a listener (tests use port 0).
func (b *Broker) Addr(id string) net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, ok := b.listeners[id]; ok {
		return l.Addr()
	}
	return nil
}

// AdminAddr is the admin listener's address, "" when off.
func (b *Broker) AdminAddr() string {
	if b.admin == nil {
		return ""
	}
	return b.admin.Addr()
}

// cleanupPanicked removes what a panicking session left in mochi: its
// client entry and subscriptions (mochi's own cleanup was skipped).
// closeListenerClients disconnects the clients of one listener (MQTT 5:
// 0x8B) when it closes. mochi's own takes its client list's read lock
// twice (Clients.GetByListener calls Len under it): a client leaving in
// between, whose Delete waits for the write lock, deadlocks the stop.
// GetAll takes it once.
func (b *Broker) closeListenerClients(listenerID string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listenerID && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

func (b *Broker) cleanupPanicked(remote string, conn net.Conn) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Conn != conn {
			continue
		}
		// mochi's own end-of-session step did not run. A persistent
		// session stays, offline, with its subscriptions and its in-flight
		// and queued messages, as after any abnormal disconnect; only a
		// clean one is removed.
		cl.Stop(errSessionPanicked)
		if mochi.Persistent(cl) {
			b.log.Error("client session panicked; its persistent session is kept", "client", cl.ID, "remote", remote)
			continue
		}
		b.srv.UnsubscribeClient(cl)
		cl.ClearInflights()
		b.srv.Clients.Delete(cl.ID)
		b.log.Error("client session panicked and was removed", "client", cl.ID, "remote", remote)
	}
}

var errSessionPanicked = errors.New("session panicked")

func (b *Broker) startAdmin() error {
	if b.cfg.Admin.Listener == "" {
		return nil
	}
	b.admin = admin.New(admin.Options{Addr: b.cfg.Admin.Listener, Gatherer: b.reg, Logger: b.log.With("component", "admin")})
	b.admin.Register("listeners", func(context.Context) error {
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.pending) > 0 {
			return fmt.Errorf("%d TLS listener(s) waiting for a certificate", len(b.pending))
		}
		return nil
	})
	if b.persist != nil {
		b.admin.Register("store", b.persist.check)
	}
	if b.cluster != nil {
		b.admin.Register("cluster", b.clusterCheck)
	}
	if b.UsesTLS() {
		b.admin.Register("certificate", admin.CertificateCheck(b.leafCertificate, time.Duration(b.cfg.Admin.CertMinDays)*24*time.Hour))
	}
	if err := b.admin.Start(); err != nil {
		// Name the directive: a default the user never wrote is otherwise a mystery.
		where := "the default"
		if b.cfg.Admin.Pos.File != "" {
			where = b.cfg.Admin.Pos.String()
		}
		return fmt.Errorf("admin_listener %s (%s): %w; set admin_listener ADDR:PORT to another port, or admin_listener off", b.cfg.Admin.Listener, where, err)
	}
	return nil
}

// Reload re-reads the configuration and every file it names, in four
// steps: validate (load it all), diff (a change only a restart can apply
// refuses the reload, naming the directive and file:line), commit (swap the
// policy, certificate sources and settings) and apply (end sessions that
// lost their rights). Only the first two can fail, and a failure changes
// nothing: the previous configuration stays in force.
func (b *Broker) Reload() error { return b.reload(nil) }

// reload is Reload; a non-nil stable is asked after the files were read
// and before they are put in force (see watchFiles).
func (b *Broker) reload(stable func() bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	refused := func(err error) error { return fmt.Errorf("reload refused, previous configuration kept: %w", err) }
	cfg, policy, sums, fresh, err := b.loadReload()
	if stable != nil && !stable() {
		return errChangedDuringLoad
	}
	if err != nil {
		return refused(err)
	}
	// Last, as nothing may fail after it: it opens the new log files.
	var applyLogs func()
	if logSettingsChanged(b.live.Log, cfg.Log) {
		if b.logs == nil {
			return refused(errors.New("restart required: log_dest, log_type or log_format"))
		}
		if applyLogs, err = b.logs(cfg); err != nil {
			return refused(err)
		}
	}

	n := b.auth.Swap(policy)
	b.swapCertFiles(fresh)
	if b.acme != nil {
		b.acme.LoadStored() // a certificate `moat cert renew` stored
	}
	b.connMessages.Store(cfg.Log.ConnectionMessages)
	b.applyLimits(cfg)
	if applyLogs != nil {
		applyLogs()
	}
	b.live = cfg
	b.rewatch() // the files named may have changed
	for _, w := range cfg.Warnings {
		b.log.Warn(w)
	}
	for _, s := range sums {
		for _, w := range s.Warnings {
			b.log.Warn(w)
		}
	}
	b.log.Info("reloaded password and ACL files", "configuration", strings.Join(cfg.Files, ","), "disconnected", n)
	return nil
}

// loadReload is a reload's validate and diff steps: the configuration read
// again (when it has a file), what only a restart can change, the policy
// files and changed certificate files. It changes nothing.
func (b *Broker) loadReload() (*config.Config, *auth.Policy, []ScopeSummary, map[string]*certs.FileSource, error) {
	cfg := b.live
	if b.load != nil {
		next, err := b.load()
		if err != nil {
			return nil, nil, nil, nil, err
		}
		if r := config.RestartRequired(b.live, next); len(r) > 0 {
			return nil, nil, nil, nil, errors.New("restart required: " + strings.Join(r, "; restart required: "))
		}
		cfg = next
	}
	if err := checkUsers(cfg); err != nil {
		return nil, nil, nil, nil, err
	}
	policy, sums, err := LoadPolicy(cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	fresh, err := b.changedCertFiles(cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	return cfg, policy, sums, fresh, nil
}

// Close stops accepting, disconnects clients (MQTT 5: DISCONNECT 0x8B),
// flushes and closes the store, unmounts it, and stops the admin listener.
func (b *Broker) Close(ctx context.Context) error {
	var err error
	b.closeOnce.Do(func() { err = b.close(ctx) })
	return err
}

func (b *Broker) close(ctx context.Context) error {
	b.cancel()
	var errs []error
	if b.srv != nil {
		_ = b.srv.Close()
	}
	b.closeCluster()
	if err := b.run.wait(ctx); err != nil {
		errs = append(errs, err)
		b.log.Error("stop did not finish in time", "error", err)
	}
	if b.persist != nil {
		errs = append(errs, b.persist.close())
	}
	if b.admin != nil {
		errs = append(errs, b.admin.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// leafCertificate is the served certificate that expires first, for the
// readiness check: every TLS listener must have a certificate.
func (b *Broker) leafCertificate() (*x509.Certificate, error) {
	var first *x509.Certificate
	for _, l := range b.cfg.Listeners {
		if !l.TLS.Enabled() {
			continue
		}
		x, err := b.servedCertificate(l)
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.ID, err)
		}
		if first == nil || x.NotAfter.Before(first.NotAfter) {
			first = x
		}
	}
	if first == nil {
		return nil, errors.New("no TLS listener")
	}
	return first, nil
}
