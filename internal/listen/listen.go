// Package listen provides Moat's network listeners for mochi: MQTT over TCP,
// TLS, WebSocket and secure WebSocket, with the protections mochi's own
// listeners lack (accept-error backoff, per-session panic recovery, a deadline
// for the CONNECT packet, connection caps and rates per client IP, MQTT
// framing checks before mochi decodes, and a hardened WebSocket endpoint).
package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"golang.org/x/time/rate"

	"github.com/moat-mqtt/moat/internal/logging"
)

var _ listeners.Listener = (*Listener)(nil)

// Defaults applied by New.
const (
	DefaultConnectTimeout    = 10 * time.Second
	DefaultReadHeaderTimeout = 10 * time.Second
	keepAlivePeriod          = 30 * time.Second
	maxAcceptBackoff         = time.Second
	minAcceptBackoff         = 5 * time.Millisecond
	wsCloseTimeout           = time.Second
)

// keepAlive is the TCP keepalive of every connection: a peer gone without
// a FIN is found in about a minute and a half.
func keepAlive() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: keepAlivePeriod, Interval: keepAlivePeriod / 2, Count: 4}
}

// Options configures a Listener.
type Options struct {
	ID        string
	Network   string // "tcp" (default) or "unix"
	Address   string // host:port; port 0 picks a free one
	WebSocket bool
	// TLS enables TLS (MQTT over TLS, or WSS). The listener clones it, raises
	// MinVersion to TLS 1.2 and never offers h2.
	TLS *tls.Config

	// ConnectTimeout bounds the time from accept to the end of the CONNECT
	// packet; mochi replaces the deadline with its keepalive one after that.
	ConnectTimeout time.Duration

	MaxConnections      int        // on this listener, 0 = unlimited
	MaxConnectionsPerIP int        // 0 = unlimited; IPv6 counted per /64
	ConnectRate         rate.Limit // new connections per second per IP, 0 = off
	ConnectBurst        int

	// MaxPacketSize limits a whole MQTT packet (fixed header included) and a
	// WebSocket message. 0 = no limit (not recommended).
	MaxPacketSize int

	WebSocketPath string   // "" = any path, else exact match
	Origins       []string // allowed Origin values (scheme://host[:port]); empty = any
	// TrustedProxies are peers (e.g. cloudflared) whose CF-Connecting-IP /
	// X-Forwarded-For headers name the real client on WebSocket upgrades.
	TrustedProxies []netip.Prefix

	// OnPanic runs after a session panicked and its connection was closed.
	// conn is the exact net.Conn given to mochi, so the broker can find the
	// client with cl.Net.Conn == conn. mochi registers the client in
	// server.Clients and the topic index before its read loop, and a panic
	// skips its cleanup, so OnPanic must: find that client (only if its
	// Net.Conn is still conn: a newer session may have taken the ID over),
	// call server.UnsubscribeClient(cl), cl.ClearInflights() for clean
	// sessions and server.Clients.Delete(cl.ID). mochi's deferred
	// ClientsConnected decrement and Listeners.ClientsWg.Done still run.
	OnPanic func(remote string, conn net.Conn)
	// CloseClients, when set, disconnects the listener's clients at Close
	// in place of the function mochi hands to Close: mochi's reads its
	// client list under a read lock taken twice, and a client leaving in
	// between deadlocks the shutdown.
	CloseClients func(listenerID string)

	// OnRefused is told of each connection a limit refused, with the
	// setting's name: max_connections, max_connections_per_ip or
	// max_connection_rate_per_ip (metrics).
	OnRefused func(limit string)

	// WriteTimeout bounds one write to a client; 0 = DefaultWriteTimeout.
	WriteTimeout time.Duration

	// Listener, when set, is used instead of opening Network/Address
	// (socket activation, tests).
	Listener net.Listener

	Logger *slog.Logger
}

// Listener implements mochi's listeners.Listener.
type Listener struct {
	o      Options
	log    *slog.Logger
	limits *limiter
	tls    *tls.Config
	hsLog  *handshakeLog
	trust  []netip.Prefix

	ln      net.Listener // raw listener (guarded)
	guard   *guardListener
	httpSrv *http.Server
	up      wsUpgrader
	// establish is mochi's callback, set by Serve for the HTTP handler.
	establish listeners.EstablishFn

	closed atomic.Bool
	mu     sync.Mutex
	live   map[net.Conn]struct{} // sessions handed to mochi
	stop   chan struct{}         // closed by Close
	quiet  *logging.Limiter      // refusal lines, a few per window

	// skipFrameCheck disables the framing reader (tests only: shows the
	// recover alone contains mochi #501).
	skipFrameCheck bool
}

// New validates o and returns an unopened listener; Init opens it.
func New(o Options) (*Listener, error) {
	if o.ID == "" {
		return nil, errors.New("listen: empty listener id")
	}
	if o.Network == "" {
		o.Network = "tcp"
	}
	if o.Network != "tcp" && o.Network != "unix" {
		return nil, fmt.Errorf("listen %s: unsupported network %q", o.ID, o.Network)
	}
	if o.Address == "" && o.Listener == nil {
		return nil, fmt.Errorf("listen %s: empty address", o.ID)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxConnections < 0 || o.MaxConnectionsPerIP < 0 || o.MaxPacketSize < 0 || o.ConnectBurst < 0 || o.ConnectRate < 0 {
		return nil, fmt.Errorf("listen %s: negative limit", o.ID)
	}
	for _, origin := range o.Origins {
		if origin == "" || origin == "*" {
			return nil, fmt.Errorf("listen %s: invalid origin %q (leave the list empty to allow any)", o.ID, origin)
		}
	}
	if o.WebSocketPath != "" && o.WebSocketPath[0] != '/' {
		return nil, fmt.Errorf("listen %s: websocket path %q must start with /", o.ID, o.WebSocketPath)
	}
	l := &Listener{
		o:      o,
		log:    o.Logger,
		limits: newLimiter(o.MaxConnections, o.MaxConnectionsPerIP, o.ConnectRate, o.ConnectBurst),
		trust:  slices.Clone(o.TrustedProxies),
		live:   make(map[net.Conn]struct{}),
		stop:   make(chan struct{}),
		hsLog:  newHandshakeLog(),
	}
	for i, p := range l.trust {
		l.trust[i] = p.Masked()
	}
	if o.TLS != nil {
		l.tls = o.TLS.Clone()
		if l.tls.MinVersion < tls.VersionTLS12 {
			l.tls.MinVersion = tls.VersionTLS12
		}
		if o.WebSocket {
			l.tls.NextProtos = []string{"http/1.1"}
		} else {
			l.tls.NextProtos = slices.DeleteFunc(slices.Clone(l.tls.NextProtos), func(p string) bool {
				return p == "h2" || p == "http/1.1"
			})
		}
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.quiet = logging.NewLimiter(l.log, logging.LimitOptions{
		Burst: 5, Window: 10 * time.Second, Message: "repeated connection refusals not logged", KeyAttr: "reason",
	})
	return l, nil
}

// ID returns the listener id.
func (l *Listener) ID() string { return l.o.ID }

// Protocol returns "tcp", "unix", "ws" or "wss", as mochi's listeners do
// (mochi's TCP listener reports "tcp" with or without TLS).
func (l *Listener) Protocol() string {
	switch {
	case l.o.WebSocket && l.tls != nil:
		return "wss"
	case l.o.WebSocket:
		return "ws"
	case l.o.Network == "unix":
		return "unix"
	}
	return "tcp"
}

// Address returns the bound address after Init, else the configured one.
func (l *Listener) Address() string {
	if a := l.Addr(); a != nil {
		return a.String()
	}
	return l.o.Address
}

// Addr returns the bound address after Init, or nil before.
func (l *Listener) Addr() net.Addr {
	if l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Init opens the network listener. mochi passes its logger, which is used
// when Options.Logger was not set.
func (l *Listener) Init(log *slog.Logger) error {
	if l.o.Logger == nil && log != nil {
		l.log = log
	}
	ln := l.o.Listener
	if ln == nil {
		// Accepted connections get the keepalive settings from the
		// listener, with the accept: no extra system calls per connection.
		lc := net.ListenConfig{KeepAliveConfig: keepAlive()}
		var err error
		ln, err = lc.Listen(context.Background(), l.o.Network, l.o.Address)
		if err != nil {
			return fmt.Errorf("listen %s: %w", l.o.ID, err)
		}
	}
	l.ln = ln
	l.guard = &guardListener{Listener: ln, l: l}
	if l.o.WebSocket {
		l.initWebSocket()
	}
	return nil
}

// Serve accepts connections until Close and runs each session through
// establish. It returns after Close.
func (l *Listener) Serve(establish listeners.EstablishFn) {
	if l.guard == nil {
		l.log.Error("listener served before Init", "listener", l.o.ID)
		return
	}
	if l.o.WebSocket {
		l.serveWebSocket(establish)
		return
	}
	for {
		c, err := l.guard.Accept()
		if err != nil {
			return // only after Close
		}
		go l.session(establish, l.wrapStream(c))
	}
}

// wrapStream layers TLS (handshake happens lazily under the connect
// deadline, in the session goroutine) and the framing reader.
func (l *Listener) wrapStream(c net.Conn) net.Conn {
	if l.tls != nil {
		c = &hsConn{Conn: tls.Server(c, l.tls), l: l}
	}
	if l.skipFrameCheck {
		return c
	}
	return newFrameConn(c, l.o.MaxPacketSize, l.o.WriteTimeout)
}

// session runs one mochi session. A panic is contained to this client.
func (l *Listener) session(establish listeners.EstablishFn, c net.Conn) {
	remote := c.RemoteAddr().String()
	if !l.track(c) {
		_ = c.Close()
		return
	}
	defer l.untrack(c)
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		l.log.Error("client session panicked; client dropped", "listener", l.o.ID, "remote", remote,
			"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		_ = c.Close()
		if l.o.OnPanic != nil {
			func() {
				defer func() {
					if r := recover(); r != nil {
						l.log.Error("panic cleanup failed", "listener", l.o.ID, "remote", remote, "panic", fmt.Sprint(r))
					}
				}()
				l.o.OnPanic(remote, c)
			}()
		}
	}()
	err := establish(l.o.ID, c)
	_ = c.Close()
	if err != nil {
		l.logSessionEnd(remote, err)
	}
}

func (l *Listener) logSessionEnd(remote string, err error) {
	switch {
	case errors.Is(err, ErrPacketTooLarge), errors.Is(err, ErrMalformedLength),
		errors.Is(err, ErrMalformedSubscribe), errors.Is(err, ErrMalformedConnect),
		errors.Is(err, ErrFirstNotConnect):
		l.log.Info("client dropped: invalid packet", "listener", l.o.ID, "remote", remote, "error", err)
	default:
		l.log.Debug("client session ended", "listener", l.o.ID, "remote", remote, "error", err)
	}
}

func (l *Listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return false
	}
	l.live[c] = struct{}{}
	return true
}

func (l *Listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.live, c)
	l.mu.Unlock()
}

// Close stops accepting, lets mochi disconnect its registered clients through
// closeClients, then closes every remaining session (WebSocket sessions get a
// close frame), including those that have not sent CONNECT yet.
func (l *Listener) Close(closeClients listeners.CloseFn) {
	if !l.closed.CompareAndSwap(false, true) {
		return
	}
	close(l.stop)
	if l.httpSrv != nil {
		_ = l.httpSrv.Close() // idle HTTP conns; hijacked ones are tracked below
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
	switch {
	case l.o.CloseClients != nil:
		l.o.CloseClients(l.o.ID)
	case closeClients != nil:
		closeClients(l.o.ID)
	}
	l.mu.Lock()
	conns := make([]net.Conn, 0, len(l.live))
	for c := range l.live {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { _ = c.Close() })
	}
	wg.Wait()
}

// Stats reports live connections counted against the limits and the number
// of per-IP entries held.
func (l *Listener) Stats() (connections, ipEntries int) {
	entries, total := l.limits.tracked()
	return total, entries
}

// refused counts and logs (a few lines per window) a connection a limit
// refused.
func (l *Listener) refused(remote, reason string) {
	if l.o.OnRefused != nil {
		l.o.OnRefused(limitSetting(reason))
	}
	if l.quiet.Allow(reason) {
		l.log.Warn("connection refused", "listener", l.o.ID, "remote", remote, "reason", reason)
	}
}

// Sessions is the number of connections handed to mochi and not yet
// ended (tracked for Close).
func (l *Listener) Sessions() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live)
}

// guardListener is the accept side shared by all variants: it never returns
// a transient error, refuses connections over the limits at once, and arms
// the CONNECT deadline and TCP keepalive.
type guardListener struct {
	net.Listener
	l *Listener
}

func (g *guardListener) Accept() (net.Conn, error) {
	l := g.l
	backoff := time.Duration(0)
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return nil, net.ErrClosed
			}
			if backoff == 0 {
				backoff = minAcceptBackoff
			} else {
				backoff = min(2*backoff, maxAcceptBackoff)
			}
			l.log.Warn("accept failed; retrying", "listener", l.o.ID, "error", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.stop:
				t.Stop()
			}
			continue
		}
		backoff = 0
		if tc, ok := c.(*net.TCPConn); ok && l.o.Listener != nil {
			_ = tc.SetKeepAliveConfig(keepAlive()) // a listener Moat did not open
		}
		_ = c.SetDeadline(time.Now().Add(l.o.ConnectTimeout))

		peer := addrIP(c.RemoteAddr())
		gc := &guardedConn{Conn: c, peer: peer}
		// Peers that are trusted proxies on a WebSocket listener are
		// counted per upgrade request, on the client IP they name.
		if !(l.o.WebSocket && l.trusted(peer)) {
			release, reason := l.limits.acquire(peer)
			if reason != denyNone {
				_ = c.Close()
				l.refused(c.RemoteAddr().String(), reason)
				continue
			}
			gc.release = release
		}
		return gc, nil
	}
}

// guardedConn releases its limit slot when closed.
type guardedConn struct {
	net.Conn
	peer    netip.Addr
	release func()
}

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil {
		c.release() // idempotent
	}
	return err
}

// addrIP extracts the IP of a peer address; unix sockets yield the zero Addr.
func addrIP(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (l *Listener) trusted(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	for _, p := range l.trust {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
