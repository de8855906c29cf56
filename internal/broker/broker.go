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
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/moat-mqtt/moat/internal/admin"
	"github.com/moat-mqtt/moat/internal/auth"
	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/listen"
	"github.com/moat-mqtt/moat/internal/metrics"
	"github.com/moat-mqtt/moat/internal/passwd"
)

// Options configures a Broker.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Env reads the environment (os.Getenv); tests inject.
	Env func(string) string
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
	cluster *clusterNode // nil unless cluster_nats is set

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once // mochi panics on a second Close

	files map[string]*certs.FileSource // by listener id
	acme  *certs.Manager

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
	policy, sums, err := LoadPolicy(cfg)
	if err != nil {
		return nil, err
	}
	for _, s := range sums {
		for _, w := range s.Warnings {
			log.Warn(w)
		}
	}
	b := &Broker{cfg: cfg, log: log, env: env, files: map[string]*certs.FileSource{}, listeners: map[string]*listen.Listener{}}
	b.ctx, b.cancel = context.WithCancel(context.Background())

	b.reg = metrics.NewRegistry()
	ids := make([]string, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		ids = append(ids, l.ID)
	}
	if b.met, err = metrics.New(b.reg, ids...); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}

	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:           capabilities(cfg),
		Logger:                 log.With("component", "mqtt"),
		SysTopicResendInterval: int64(max(cfg.SysInterval/time.Second, 1)),
	})
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
		Events:  b.met,
		Logger:  log.With("component", "auth"),
		Context: b.ctx,
	})
	// The auth hook goes first and alone decides authentication and ACLs;
	// no permissive hook is ever added (mochi ORs them).
	if err := b.srv.AddHook(b.auth, nil); err != nil {
		return nil, fmt.Errorf("auth hook: %w", err)
	}
	if err := b.srv.AddHook(b.auth.DeliveryGuard(), nil); err != nil {
		return nil, fmt.Errorf("delivery guard hook: %w", err)
	}
	if err := b.srv.AddHook(metrics.NewHook(b.met, metrics.RetainedCount(b.srv)), nil); err != nil {
		return nil, fmt.Errorf("metrics hook: %w", err)
	}
	if err := stopRetainedSweep(b.srv); err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if cfg.Log.ConnectionMessages {
		if err := b.srv.AddHook(&connLog{log: log.With("component", "mqtt")}, nil); err != nil {
			return nil, fmt.Errorf("connection log hook: %w", err)
		}
	}
	if err := b.srv.AddHook(&packetIDs{}, nil); err != nil {
		return nil, fmt.Errorf("packet id hook: %w", err)
	}
	if err := b.srv.AddHook(&subIDs{}, nil); err != nil {
		return nil, fmt.Errorf("subscription identifier hook: %w", err)
	}
	if err := b.srv.AddHook(&wire{}, nil); err != nil {
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
// advertises them anyway). The outbound queue keeps mochi's 8192 entries:
// mochi drops what does not fit, and a subscription's retained messages
// all go through it at once (a Home Assistant discovery subscription can
// match thousands). Its buffer is touched only as it fills, so idle
// connections do not pay for it in memory.
func capabilities(cfg *config.Config) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = cfg.Limits.MaxPacketSize
	c.MaximumMessageExpiryInterval = 0
	c.MaximumClientWritesPending = 8192
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
	if err := b.startCluster(); err != nil {
		b.Close(context.Background())
		return err
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.expiry.run(b.ctx)
	}()
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
		ID:                  l.ID,
		WebSocket:           l.Protocol == "websockets",
		ConnectTimeout:      l.ConnectTimeout,
		MaxConnectionsPerIP: l.MaxConnectionsPerIP,
		MaxPacketSize:       int(b.cfg.Limits.MaxPacketSize),
		WebSocketPath:       l.WebSocketPath,
		Origins:             l.WebSocketOrigins,
		TrustedProxies:      l.TrustedProxies,
		Logger:              b.log.With("listener", l.ID),
		OnPanic:             b.cleanupPanicked,
	}
	if l.MaxConnections > 0 {
		o.MaxConnections = l.MaxConnections
	}
	if l.ConnectRatePerIP > 0 {
		o.ConnectRate = rate.Limit(l.ConnectRatePerIP)
		o.ConnectBurst = max(int(l.ConnectRatePerIP), 10)
	}
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
		if persistentSession(cl) {
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

// persistentSession is mochi's rule for a session that outlives its
// connection.
func persistentSession(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

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
		return fmt.Errorf("admin_listener %s: %w", b.cfg.Admin.Listener, err)
	}
	return nil
}

// Reload re-reads the password and ACL files (and certificate files) and
// puts them in force at once, or changes nothing and returns the error.
func (b *Broker) Reload() error { return b.reload(nil) }

// reload is Reload; a non-nil stable is asked after the files were read
// and before they are put in force (see watchFiles).
func (b *Broker) reload(stable func() bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	policy, _, err := LoadPolicy(b.cfg)
	if stable != nil && !stable() {
		return errChangedDuringLoad
	}
	if err != nil {
		return fmt.Errorf("reload refused, previous configuration kept: %w", err)
	}
	n := b.auth.Swap(policy)
	for id, f := range b.files {
		if err := f.Reload(); err != nil {
			b.log.Error("certificate reload failed, previous certificate kept", "listener", id, "error", err)
		}
	}
	b.log.Info("reloaded password and ACL files", "disconnected", n)
	return nil
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
	b.wg.Wait()
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
