package admin

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"
)

// ErrNotReady is wrapped by Check when the server answered but a readiness
// check failed.
var ErrNotReady = errors.New("not ready")

// Check asks the admin listener at addr (host:port, as in admin_listener)
// for /readyz. A wildcard host (0.0.0.0, ::, empty) is probed on loopback.
// Without a deadline on ctx it gives up after 5 s. The error says which
// checks failed, or why the listener could not be asked.
func Check(ctx context.Context, addr string) error {
	target, err := probeAddr(addr)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("admin %s: %w", target, err)
	}
	// No proxy: HTTP_PROXY in a container must not capture a loopback probe.
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("admin %s: %w", target, err)
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 1024)).ReadString('\n')
	line = sanitize(strings.TrimSpace(line))
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode == http.StatusServiceUnavailable && strings.HasPrefix(line, notReadyPrefix):
		return fmt.Errorf("moat at %s is %w: failing checks: %s", target, ErrNotReady, strings.TrimPrefix(line, notReadyPrefix))
	default:
		return fmt.Errorf("admin %s: unexpected answer %s", target, resp.Status)
	}
}

// probeAddr turns a listen address into one to dial.
func probeAddr(addr string) (string, error) {
	if addr == "" || strings.EqualFold(addr, "off") {
		return "", fmt.Errorf("admin_listener is off: no readiness endpoint to ask")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin_listener %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}

// sanitize keeps the answer printable before it reaches a terminal or log.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}
