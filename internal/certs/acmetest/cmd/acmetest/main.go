// Command acmetest serves the acmetest environment (Pebble, the fake
// Cloudflare API and its DNS server) to other containers, for tests that run
// Moat's image: the servers listen on loopback as in the in-process tests,
// and plain relays make them reachable on the container's network. It
// writes the CA's root and the ACME server's certificate to -out.
//
// It is test support only: never point anything real at it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/certs/acmetest"
)

func main() {
	testing.Init() // acmetest asks testing.Verbose
	acmeAddr := flag.String("acme", ":14000", "address for the ACME directory (HTTPS)")
	apiAddr := flag.String("api", ":14080", "address for the fake Cloudflare API (HTTP)")
	dnsAddr := flag.String("dns", ":5353", "address for DNS (UDP and TCP)")
	out := flag.String("out", "/out", "directory for root.pem and acme-server.pem")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(*acmeAddr, *apiAddr, *dnsAddr, *out, log); err != nil {
		log.Error("acmetest", "err", err)
		os.Exit(1)
	}
}

func run(acmeAddr, apiAddr, dnsAddr, out string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	t := &tb{}
	defer t.cleanup()
	acmetest.SetEnv(t)
	if t.failed != "" {
		return errors.New(t.failed)
	}
	var cf *acmetest.Cloudflare
	var ca *acmetest.CA
	if !t.do(func() { cf = acmetest.NewCloudflare(t); ca = acmetest.NewCA(t, cf.DNSAddr) }) {
		return errors.New(t.failed)
	}
	roots, err := os.ReadFile(ca.RootsFile)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "acme-server.pem"), roots, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "root.pem"), ca.RootPEM(), 0o644); err != nil {
		return err
	}
	relays := []struct{ from, to string }{
		{acmeAddr, hostPort(ca.DirURL)},
		{apiAddr, hostPort(cf.BaseURL)},
		{dnsAddr, cf.DNSAddr},
	}
	for _, r := range relays {
		if err := relayTCP(ctx, r.from, r.to); err != nil {
			return err
		}
	}
	if err := relayUDP(ctx, dnsAddr, cf.DNSAddr); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "ready"), nil, 0o644); err != nil {
		return err
	}
	log.Info("serving", "acme", acmeAddr, "api", apiAddr, "dns", dnsAddr,
		"dir_path", strings.TrimPrefix(ca.DirURL, "https://"+hostPort(ca.DirURL)))
	<-ctx.Done()
	return nil
}

// hostPort is the host:port of an http(s) URL.
func hostPort(u string) string {
	rest := u[strings.Index(u, "//")+2:]
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

func relayTCP(ctx context.Context, from, to string) error {
	ln, err := net.Listen("tcp", from)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, err := net.DialTimeout("tcp", to, 5*time.Second)
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { io.Copy(b, c); done <- struct{}{} }()
				go func() { io.Copy(c, b); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return nil
}

func relayUDP(ctx context.Context, from, to string) error {
	pc, err := net.ListenPacket("udp", from)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); pc.Close() }()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			go func() {
				b, err := net.Dial("udp", to)
				if err != nil {
					return
				}
				defer b.Close()
				b.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := b.Write(q); err != nil {
					return
				}
				ans := make([]byte, 64<<10)
				m, err := b.Read(ans)
				if err != nil {
					return
				}
				pc.WriteTo(ans[:m], addr)
			}()
		}
	}()
	return nil
}

// tb is the part of testing.TB acmetest uses, for a long-running process.
type tb struct {
	testing.TB // nil: any other method panics
	mu         sync.Mutex
	cleanups   []func()
	failed     string
}

// errFatal unwinds a Fatal out of acmetest's constructors.
var errFatal = errors.New("fatal")

func (t *tb) do(f func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if r != errFatal {
				panic(r)
			}
			ok = false
		}
	}()
	f()
	return true
}

func (t *tb) Helper() {}
func (t *tb) Fatal(args ...any) {
	t.failed = fmt.Sprint(args...)
	panic(errFatal)
}
func (t *tb) Fatalf(format string, args ...any) {
	t.failed = fmt.Sprintf(format, args...)
	panic(errFatal)
}
func (t *tb) Cleanup(f func()) { t.mu.Lock(); t.cleanups = append(t.cleanups, f); t.mu.Unlock() }
func (t *tb) Setenv(k, v string) {
	if err := os.Setenv(k, v); err != nil {
		t.failed = err.Error()
	}
}
func (t *tb) TempDir() string {
	d, err := os.MkdirTemp("", "acmetest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
func (t *tb) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (t *tb) cleanup() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
