package certs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/moattest"
)

const testDomain = "mqtt." + acmetest.Zone

// logBuf records everything logged so tests can prove secrets never appear.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
	out io.Writer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if l.out != nil {
		_, _ = l.out.Write(p)
	}
	return len(p), nil
}

func (l *logBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.buf.String() }

type harness struct {
	t     testing.TB
	cf    *acmetest.Cloudflare
	ca    *acmetest.CA
	state string
	logs  *logBuf
	env   map[string]string
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	acmetest.SetEnv(t)
	h := &harness{t: t, cf: acmetest.NewCloudflare(t), state: t.TempDir(), logs: &logBuf{}}
	if testing.Verbose() {
		h.logs.out = t.Output()
	}
	h.ca = acmetest.NewCA(t, h.cf.DNSAddr)
	h.env = map[string]string{
		"CLOUDFLARE_DNS_API_TOKEN": acmetest.Token,
		"CLOUDFLARE_BASE_URL":      h.cf.BaseURL,
		"LEGO_CA_CERTIFICATES":     h.ca.RootsFile,
	}
	t.Cleanup(func() {
		if strings.Contains(h.logs.String(), acmetest.Token) {
			t.Error("the API token appeared in the logs")
		}
	})
	return h
}

func (h *harness) opts() ACMEOptions {
	env := h.env
	return ACMEOptions{
		Domains:                []string{testDomain},
		DirectoryURL:           h.ca.DirURL,
		Profile:                acmetest.Profile,
		Resolvers:              []string{h.cf.DNSAddr},
		SkipAuthoritativeCheck: true,
		PropagationTimeout:     10 * time.Second,
		PollingInterval:        100 * time.Millisecond,
		StateDir:               h.state,
		CloudflareCredentials:  filepath.Join(h.state, "no-such.ini"),
		Env:                    func(k string) string { return env[k] },
		Logger:                 slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Backoff:                []time.Duration{time.Hour, 2 * time.Hour, 3 * time.Hour},
	}
}

func (h *harness) manager(o ACMEOptions) *Manager {
	h.t.Helper()
	m, err := NewManager(o)
	if err != nil {
		h.t.Fatalf("NewManager: %v", err)
	}
	return m
}

// run starts m.Run and stops it (waiting) when the test ends.
func run(t *testing.T, m *Manager) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("Run did not return")
		}
	})
	return cancel
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	moattest.Eventually(t, d, what, cond)
}

func serial(t testing.TB, s Source) string {
	t.Helper()
	c, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: testDomain})
	if err != nil {
		t.Fatalf("GetCertificate: %v", err)
	}
	return c.Leaf.SerialNumber.Text(16)
}

// verifyChain checks the served chain against the CA's root.
func verifyChain(t testing.TB, c *tls.Certificate, rootPEM []byte) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	inter := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: testDomain, Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("certificate does not verify against the CA root: %v", err)
	}
}

func TestACMEFirstIssuanceThenRestartReuses(t *testing.T) {
	h := newHarness(t)
	// Credentials from a certbot-style ini this time, not the environment.
	delete(h.env, "CLOUDFLARE_DNS_API_TOKEN")
	ini := filepath.Join(h.state, "cloudflare.ini")
	if err := os.WriteFile(ini, []byte("# certbot\ndns_cloudflare_api_token = "+acmetest.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := h.opts()
	o.CloudflareCredentials = ini
	m := h.manager(o)
	select {
	case <-m.Ready():
		t.Fatal("ready before any certificate")
	default:
	}
	if _, err := m.GetCertificate(nil); err == nil {
		t.Fatal("GetCertificate succeeded with nothing obtained")
	}
	start := time.Now()
	run(t, m)
	select {
	case <-m.Ready():
	case <-time.After(45 * time.Second):
		t.Fatalf("no certificate; status %+v", m.Status())
	}
	t.Logf("time to first certificate: %v", time.Since(start).Round(time.Millisecond))
	c, _ := m.GetCertificate(nil)
	verifyChain(t, c, h.ca.RootPEM())
	st := m.Status()
	if st.Serial == "" || st.NotAfter.Sub(st.NotBefore) < 89*24*time.Hour || len(st.Names) != 1 || st.Names[0] != testDomain || st.Failures != 0 {
		t.Fatalf("status %+v", st)
	}
	if !st.NextRenewal.After(time.Now().Add(24*time.Hour)) || !st.NextRenewal.Before(st.NotAfter) {
		t.Fatalf("next renewal %v for a 90-day certificate", st.NextRenewal)
	}
	if h.ca.Orders() != 1 {
		t.Fatalf("orders = %d, want 1", h.ca.Orders())
	}
	if _, ok := c.PrivateKey.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("key is %T, want ECDSA (ec256 default)", c.PrivateKey)
	}
	waitFor(t, "TXT record cleanup", 10*time.Second, func() bool { return h.cf.Live() == 0 })
	checkPerms(t, h.state)

	// Restart: the stored certificate is served at once, no new order.
	m2 := h.manager(o)
	select {
	case <-m2.Ready():
	default:
		t.Fatal("restart: stored certificate not served at once")
	}
	if serial(t, m2) != st.Serial {
		t.Fatal("restart served another certificate")
	}
	run(t, m2)
	waitFor(t, "an ARI answer", 20*time.Second, func() bool { return m2.Status().ARI })
	if h.ca.Orders() != 1 {
		t.Fatalf("restart placed a new order (orders = %d)", h.ca.Orders())
	}
	rs, err := ReadStatus(h.state, false, h.ca.DirURL)
	if err != nil || rs.Serial != st.Serial || !rs.ARI {
		t.Fatalf("ReadStatus = %+v, %v", rs, err)
	}
}

func checkPerms(t *testing.T, root string) {
	t.Helper()
	n := 0
	err := filepath.Walk(filepath.Join(root, "acme"), func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
		if strings.Contains(fi.Name(), ".tmp") {
			t.Errorf("temp file left behind: %s", p)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{fileAccountKey, fileAccountJSON, fileCert, fileKey, fileIssuer, fileMeta, fileStatus} {
		found := false
		_ = filepath.Walk(root, func(p string, fi os.FileInfo, _ error) error {
			found = found || (fi != nil && fi.Name() == f)
			return nil
		})
		if !found {
			t.Errorf("%s not stored", f)
		}
	}
}

// tlsEcho serves an echo protocol over TLS on 127.0.0.1 with src's
// certificates.
func tlsEcho(t testing.TB, src Source) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: src.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

type echoClient struct {
	conn *tls.Conn
	r    *bufio.Reader
}

func dialEcho(t testing.TB, addr string, roots *x509.CertPool) *echoClient {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{ServerName: testDomain, RootCAs: roots})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoClient{conn: c, r: bufio.NewReader(c)}
}

func (e *echoClient) ping(msg string) error {
	_ = e.conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := fmt.Fprintln(e.conn, msg); err != nil {
		return err
	}
	got, err := e.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func (e *echoClient) serial() string {
	return e.conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
}

// renewalSwap connects clients TLS clients to a server using m, forces
// renewals, and checks that every established connection keeps exchanging
// data while each new handshake sees the new certificate.
func renewalSwap(t testing.TB, clients, renewals int) (dropped int, mean time.Duration) {
	h := newHarness(t)
	m := h.manager(h.opts())
	if err := m.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(h.ca.RootPEM())
	addr := tlsEcho(t, m)
	cs := make([]*echoClient, clients)
	for i := range cs {
		cs[i] = dialEcho(t, addr, roots)
	}
	first := cs[0].serial()
	prev := first
	var took time.Duration
	for r := range renewals {
		start := time.Now()
		if err := m.Renew(context.Background()); err != nil {
			t.Fatalf("renewal %d: %v", r, err)
		}
		took += time.Since(start)
		fresh := dialEcho(t, addr, roots)
		if fresh.serial() == prev || fresh.serial() != serial(t, m) {
			t.Fatalf("renewal %d: new handshake sees serial %s, served %s, previous %s", r, fresh.serial(), serial(t, m), prev)
		}
		prev = fresh.serial()
		if err := fresh.ping("new"); err != nil {
			t.Fatal(err)
		}
		fresh.conn.Close()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.ping(fmt.Sprintf("client %d round %d", i, r)); err != nil {
					mu.Lock()
					dropped++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	for _, c := range cs {
		if c.serial() != first {
			t.Fatal("an established connection changed certificate")
		}
	}
	if h.ca.Orders() != renewals+1 {
		t.Fatalf("orders = %d, want %d", h.ca.Orders(), renewals+1)
	}
	return dropped, took / time.Duration(renewals)
}

func TestACMERenewalSwapKeepsConnections(t *testing.T) {
	const clients, renewals = 20, 3
	dropped, mean := renewalSwap(t, clients, renewals)
	t.Logf("%d forced renewals with %d connected TLS clients: %d dropped connections, mean renewal %v",
		renewals, clients, dropped, mean.Round(time.Millisecond))
	if dropped != 0 {
		t.Fatalf("%d connections dropped", dropped)
	}
}

// BenchmarkRenewalSwap: 10 forced renewals with 100 connected TLS clients.
func BenchmarkRenewalSwap(b *testing.B) {
	for b.Loop() {
		dropped, mean := renewalSwap(b, 100, 10)
		b.ReportMetric(float64(dropped), "dropped")
		b.ReportMetric(float64(mean.Milliseconds()), "ms/renewal")
		b.Logf("10 forced renewals with 100 connected TLS clients: %d dropped connections, mean renewal %v", dropped, mean.Round(time.Millisecond))
	}
}

func TestACMEARIWindowInPastRenews(t *testing.T) {
	h := newHarness(t)
	m := h.manager(h.opts())
	if err := m.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := serial(t, m)
	certPEM, err := os.ReadFile(filepath.Join(lineageDir(h.state, h.ca.DirURL), fileCert))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	h.ca.SetRenewalInfo(t, certPEM, now.Add(-2*time.Hour), now.Add(-time.Hour))

	m2 := h.manager(h.opts())
	if serial(t, m2) != old {
		t.Fatal("restart did not serve the stored certificate")
	}
	run(t, m2)
	waitFor(t, "ARI-driven renewal", 45*time.Second, func() bool { return serial(t, m2) != old })
	if st := m2.Status(); !st.ARI && st.LastRenewed.IsZero() {
		t.Fatalf("status %+v", st)
	}
	if h.ca.Orders() != 2 {
		t.Fatalf("orders = %d, want 2", h.ca.Orders())
	}
	// The renewed certificate gets a normal window: no renewal loop.
	waitFor(t, "ARI answer for the new certificate", 20*time.Second, func() bool { return m2.Status().ARI })
	if h.ca.Orders() != 2 {
		t.Fatalf("renewed again: orders = %d", h.ca.Orders())
	}
}

func TestACMEFailuresKeepServing(t *testing.T) {
	h := newHarness(t)
	m := h.manager(h.opts())
	if err := m.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	good := serial(t, m)

	cases := []struct {
		name    string
		fault   func()
		reset   func()
		opts    func(*ACMEOptions)
		reason  string
		backoff time.Duration // wait scheduled after this (n-th) failure
	}{
		{"wrong token", func() { h.cf.SetToken("another-token") }, func() { h.cf.SetToken(acmetest.Token) }, nil,
			"Cloudflare rejected the API token", time.Hour},
		{"missing zone", func() { h.cf.SetMissingZone(true) }, func() { h.cf.SetMissingZone(false) }, nil,
			"Cloudflare has no (single) zone", 2 * time.Hour},
		{"propagation timeout", func() { h.cf.SetHideTXT(true) }, func() { h.cf.SetHideTXT(false) },
			func(o *ACMEOptions) { o.PropagationTimeout = time.Second }, "DNS propagation timeout", 3 * time.Hour},
		{"rate limited", func() { h.ca.SetRateLimit(86400 * 2) }, func() { h.ca.SetRateLimit(0) }, nil,
			"rate limited by the CA", 48 * time.Hour},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := h.opts()
			if tc.opts != nil {
				tc.opts(&o)
			}
			mf := h.manager(o) // a fresh lego client: zone IDs are cached per provider
			tc.fault()
			defer tc.reset()
			err := mf.Renew(context.Background())
			if err == nil {
				t.Fatal("renewal succeeded despite the fault")
			}
			if !strings.Contains(err.Error(), tc.reason) || strings.Contains(err.Error(), acmetest.Token) {
				t.Fatalf("error %q: want reason %q and no token", err, tc.reason)
			}
			if serial(t, mf) != good {
				t.Fatal("the valid certificate is no longer served")
			}
			st := mf.Status()
			if st.Failures != i+1 || st.LastError == "" || st.LastErrorAt.IsZero() {
				t.Fatalf("status %+v", st)
			}
			if got := st.NextAttempt.Sub(st.LastErrorAt); got != tc.backoff {
				t.Fatalf("retry scheduled in %v, want %v", got, tc.backoff)
			}
			if !strings.Contains(h.logs.String(), "certificate request failed: "+tc.reason) {
				t.Fatal("no clear log line for the failure")
			}
			rs, err := ReadStatus(h.state, false, h.ca.DirURL)
			if err != nil || rs.LastError != st.LastError || rs.Serial != good {
				t.Fatalf("ReadStatus %+v %v", rs, err)
			}
		})
	}
	if h.ca.RateLimited() == 0 {
		t.Fatal("the rate-limit path was not exercised")
	}
	// Recovery clears the failure count.
	mf := h.manager(h.opts())
	if err := mf.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := mf.Status(); st.Failures != 0 || !st.NextAttempt.IsZero() || st.Serial == good {
		t.Fatalf("after recovery: %+v", st)
	}
}

func TestACMEStagingThenProduction(t *testing.T) {
	h := newHarness(t)
	prod := acmetest.NewCA(t, h.cf.DNSAddr)
	h.env["LEGO_CA_CERTIFICATES"] = h.ca.RootsFile + string(os.PathListSeparator) + prod.RootsFile

	o := h.opts()
	o.Staging = true
	o.StagingDirectoryURL = h.ca.DirURL
	o.DirectoryURL = prod.DirURL
	ms := h.manager(o)
	if err := ms.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, _ := ms.GetCertificate(nil)
	verifyChain(t, c, h.ca.RootPEM())
	if !ms.Status().Staging {
		t.Fatal("status does not say staging")
	}
	stagingSerial := serial(t, ms)

	o.Staging = false
	mp := h.manager(o)
	if _, err := mp.GetCertificate(nil); err == nil {
		t.Fatal("production manager serves the staging certificate")
	}
	run(t, mp)
	select {
	case <-mp.Ready():
	case <-time.After(45 * time.Second):
		t.Fatalf("no production certificate: %+v", mp.Status())
	}
	c, _ = mp.GetCertificate(nil)
	verifyChain(t, c, prod.RootPEM())
	if serial(t, mp) == stagingSerial || mp.Status().Staging {
		t.Fatal("production lineage did not replace staging")
	}
	if prod.Orders() != 1 || h.ca.Orders() != 1 {
		t.Fatalf("orders staging=%d production=%d", h.ca.Orders(), prod.Orders())
	}
	if s, err := ReadStatus(h.state, true, h.ca.DirURL); err != nil || s.Serial != stagingSerial {
		t.Fatalf("staging lineage: %+v %v", s, err)
	}
}

func TestACMERunBacksOffWithoutCertificate(t *testing.T) {
	h := newHarness(t)
	h.cf.SetToken("not-the-configured-one")
	m := h.manager(h.opts())
	run(t, m)
	waitFor(t, "a failed attempt", 30*time.Second, func() bool { return m.Status().Failures == 1 })
	st := m.Status()
	if got := st.NextAttempt.Sub(st.LastErrorAt); got != time.Hour {
		t.Fatalf("next attempt in %v, want the first backoff step (1h)", got)
	}
	if !strings.Contains(st.LastError, "Authentication error") || strings.Contains(st.LastError, acmetest.Token) {
		t.Fatalf("last error %q", st.LastError)
	}
	select {
	case <-m.Ready():
		t.Fatal("ready without a certificate")
	default:
	}
	orders := h.ca.Orders()
	// Run must now sleep until the backoff ends: poll a little and see no retry.
	for range 10 {
		time.Sleep(20 * time.Millisecond)
		if m.Status().Failures != 1 || h.ca.Orders() != orders {
			t.Fatal("retried before the backoff ended")
		}
	}
}
