package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// ErrTextFrame ends a WebSocket session that sent a non-binary data frame.
var ErrTextFrame = errors.New("websocket: MQTT data must be sent in binary frames")

type wsUpgrader = websocket.Upgrader

const maxHeaderBytes = 16 << 10

func (l *Listener) initWebSocket() {
	l.up = websocket.Upgrader{
		HandshakeTimeout: l.o.ConnectTimeout,
		// Both names are in use; browsers abort unless one is echoed.
		Subprotocols:    []string{"mqtt", "mqttv3.1"},
		CheckOrigin:     l.checkOrigin,
		WriteBufferPool: &sync.Pool{}, // no write buffer held by idle sessions
		Error: func(w http.ResponseWriter, _ *http.Request, status int, _ error) {
			refuse(w, status)
		},
	}
	l.httpSrv = &http.Server{
		Handler:           http.HandlerFunc(l.serveHTTP),
		ReadHeaderTimeout: min(l.o.ConnectTimeout, DefaultReadHeaderTimeout),
		// The whole request, body included; httpConn also bounds it from
		// the accept, the TLS handshake included.
		ReadTimeout:    l.o.ConnectTimeout,
		WriteTimeout:   l.o.ConnectTimeout,
		IdleTimeout:    l.o.ConnectTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		// A non-nil empty map disables HTTP/2: WebSocket needs HTTP/1.1.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     l.httpErrorLog(), // TLS handshake failures at warning level
		ConnContext:  withHTTPConn,
	}
	// One request per connection: a client could otherwise hold a
	// connection for good with a stream of cheap requests.
	l.httpSrv.SetKeepAlivesEnabled(false)
}

// httpListener hands out httpConns.
type httpListener struct {
	net.Listener
	timeout time.Duration
}

func (h *httpListener) Accept() (net.Conn, error) {
	c, err := h.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &httpConn{Conn: c, limit: time.Now().Add(h.timeout)}, nil
}

// httpConn holds every deadline net/http sets to the connect deadline
// (accept + connect_timeout) until the upgrade: the TLS handshake, the
// request headers and any body must all arrive by then, however slowly
// they trickle in. net/http's own timeouts restart for each phase.
type httpConn struct {
	net.Conn
	limit  time.Time
	lifted atomic.Bool
}

func (c *httpConn) clamp(t time.Time) time.Time {
	if c.lifted.Load() || (!t.IsZero() && t.Before(c.limit)) {
		return t
	}
	return c.limit
}

func (c *httpConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *httpConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *httpConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.clamp(t)) }

// lift ends the clamp once the connection is a WebSocket session, whose
// deadlines mochi sets from then on.
func (c *httpConn) lift() { c.lifted.Store(true) }

type httpConnKey struct{}

func withHTTPConn(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if hc, ok := c.(*httpConn); ok {
		ctx = context.WithValue(ctx, httpConnKey{}, hc)
	}
	return ctx
}

// refuse answers status and closes the connection at once, so that a
// refused client holds no connection slot while net/http would read the
// rest of its request body.
func refuse(w http.ResponseWriter, status int) {
	c, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		w.Header().Set("Connection", "close")
		http.Error(w, http.StatusText(status), status)
		return
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(wsCloseTimeout))
	text := http.StatusText(status)
	_, _ = fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n\r\n%s\n", status, text, len(text)+1, text)
	_ = buf.Flush()
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite() // FIN after the answer, before the close
	}
}

func (l *Listener) serveWebSocket(establish listeners.EstablishFn) {
	l.mu.Lock()
	l.establish = establish
	l.mu.Unlock()
	var ln net.Listener = &httpListener{Listener: l.guard, timeout: l.o.ConnectTimeout}
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	err := l.httpSrv.Serve(ln)
	if err != nil && !l.closed.Load() {
		l.log.Error("websocket listener stopped", "listener", l.o.ID, "error", err)
	}
}

func (l *Listener) checkOrigin(r *http.Request) bool {
	if len(l.o.Origins) == 0 {
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not a browser; Origin only guards against cross-site pages
	}
	for _, o := range l.o.Origins {
		if strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

func (l *Listener) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if l.o.WebSocketPath != "" && r.URL.Path != l.o.WebSocketPath {
		refuse(w, http.StatusNotFound)
		return
	}
	// An upgrade request has no body; one that announces a body would
	// have its bytes read as WebSocket frames, or trickle in slowly.
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		refuse(w, http.StatusBadRequest)
		return
	}
	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	if establish == nil || l.closed.Load() {
		refuse(w, http.StatusServiceUnavailable)
		return
	}

	peer := netip.Addr{}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer = ap.Addr().Unmap()
	}
	var remote net.Addr
	if l.trusted(peer) {
		client := l.clientIP(r, peer)
		release, reason := l.limits.acquire(client)
		if reason != denyNone {
			l.refused(client.String(), reason)
			status := http.StatusServiceUnavailable
			if reason == denyRate {
				status = http.StatusTooManyRequests
			}
			refuse(w, status)
			return
		}
		defer release()
		if client != peer {
			remote = &net.TCPAddr{IP: client.AsSlice()}
		}
	}

	ws, err := l.up.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	if l.o.MaxPacketSize > 0 {
		ws.SetReadLimit(int64(l.o.MaxPacketSize))
	}
	nc := ws.NetConn()
	deadline := time.Now().Add(l.o.ConnectTimeout)
	if hc, ok := r.Context().Value(httpConnKey{}).(*httpConn); ok {
		hc.lift()
		deadline = hc.limit // the CONNECT too is due connect_timeout after the accept
	}
	_ = nc.SetDeadline(deadline)
	if remote == nil {
		remote = nc.RemoteAddr()
	}
	var c net.Conn = &wsConn{ws: ws, nc: nc, remote: remote}
	if !l.skipFrameCheck {
		c = newFrameConn(c, l.o.MaxPacketSize, l.o.WriteTimeout)
	}
	l.session(establish, c)
}

// clientIP names the client behind a trusted proxy: CF-Connecting-IP, else
// the rightmost X-Forwarded-For entry that is not itself a trusted proxy.
func (l *Listener) clientIP(r *http.Request, peer netip.Addr) netip.Addr {
	if a, ok := parseHostIP(r.Header.Get("CF-Connecting-IP")); ok {
		return a
	}
	found := peer
	xff := r.Header.Values("X-Forwarded-For")
	for i := len(xff) - 1; i >= 0; i-- {
		parts := strings.Split(xff[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, ok := parseHostIP(parts[j])
			if !ok {
				return found
			}
			found = a
			if !l.trusted(a) {
				return a
			}
		}
	}
	return found
}

func parseHostIP(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// wsConn presents a WebSocket as the byte stream mochi expects.
type wsConn struct {
	ws     *websocket.Conn
	nc     net.Conn
	remote net.Addr

	r   io.Reader // current inbound message
	wmu sync.Mutex
	// writeDeadline is a time in Unix nanoseconds, 0 for none.
	writeDeadline atomic.Int64
	closeOnce     sync.Once
	closeErr      error
}

var _ net.Conn = (*wsConn)(nil)

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				return 0, ErrTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var dl time.Time
	if ns := c.writeDeadline.Load(); ns > 0 {
		dl = time.Unix(0, ns)
	}
	_ = c.ws.SetWriteDeadline(dl)
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a normal-closure frame (bounded wait) and closes the socket.
func (c *wsConn) Close() error {
	c.closeOnce.Do(func() {
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wsCloseTimeout))
		c.closeErr = c.ws.Close()
	})
	return c.closeErr
}

func (c *wsConn) LocalAddr() net.Addr  { return c.nc.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr { return c.remote }

// gorilla applies its own (unsynchronised) write deadline to every frame,
// so a write deadline is kept here and handed to gorilla under the write
// lock.
func (c *wsConn) SetDeadline(t time.Time) error {
	c.writeDeadline.Store(t.UnixNano())
	return c.nc.SetReadDeadline(t)
}
func (c *wsConn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.Store(t.UnixNano())
	return nil
}
