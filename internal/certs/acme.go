package certs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/lego"
	"github.com/go-acme/lego/v4/providers/dns/cloudflare"
	"github.com/go-acme/lego/v4/registration"

	"github.com/moat-mqtt/moat/internal/config"
)

// ACMEOptions configure a Manager. Zero values select the documented defaults.
type ACMEOptions struct {
	Domains []string // names on the certificate; the first is the subject where the profile allows
	Email   string   // optional account contact
	Staging bool     // use the staging CA (Let's Encrypt staging unless overridden)
	// DirectoryURL overrides the ACME directory (production, and staging too
	// unless StagingDirectoryURL is set).
	DirectoryURL        string
	StagingDirectoryURL string // overrides the staging directory
	Profile             string // ACME profile (e.g. classic, tlsserver, shortlived); empty: CA default
	KeyType             string // ec256 (default) | ec384 | rsa2048 | rsa3072 | rsa4096

	Resolvers []string // recursive resolvers (host:port) for zone lookup and propagation checks; default 1.1.1.1:53, 8.8.8.8:53
	// PropagationCheck: wait until the TXT record is visible before asking the
	// CA to validate. nil means true.
	PropagationCheck *bool
	// SkipAuthoritativeCheck skips asking the zone's authoritative servers
	// (port 53) and trusts the recursive resolvers alone.
	SkipAuthoritativeCheck bool
	PropagationTimeout     time.Duration // default CLOUDFLARE_PROPAGATION_TIMEOUT (seconds) or 2 min
	PollingInterval        time.Duration // default CLOUDFLARE_POLLING_INTERVAL (seconds) or 2 s

	StateDir              string // account, certificates, status; created 0700
	CloudflareCredentials string // certbot-style ini; default /secrets/cloudflare.ini

	Env    func(string) string // os.Getenv in production
	Logger *slog.Logger
	Now    func() time.Time

	CheckInterval time.Duration   // how often ARI is asked; default 12 h (with jitter)
	Backoff       []time.Duration // waits after consecutive failures; default DefaultBackoff()
	UserAgent     string          // default "moat"
}

// Manager obtains and renews one certificate over ACME (DNS-01 on
// Cloudflare) and serves it through GetCertificate.
type Manager struct {
	o          ACMEOptions
	domains    []string
	dirURL     string
	dir        string // lineage directory
	keyType    certcrypto.KeyType
	creds      cfCredentials
	httpClient *http.Client
	log        *slog.Logger
	now        func() time.Time

	cur       atomic.Pointer[stored]
	ready     chan struct{}
	readyOnce sync.Once
	kick      chan struct{}

	opMu   sync.Mutex   // one ACME exchange at a time
	client *lego.Client // guarded by opMu
	acct   *account     // guarded by opMu

	mu      sync.Mutex // guards st, nextARI, retryUntil
	st      persistedStatus
	nextARI time.Time
}

// NewManager validates o and loads any stored account and certificate. It
// does no network I/O; a valid stored certificate is served at once.
func NewManager(o ACMEOptions) (*Manager, error) {
	if o.Env == nil {
		o.Env = os.Getenv
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = 12 * time.Hour
	}
	if len(o.Backoff) == 0 {
		o.Backoff = DefaultBackoff()
	}
	if len(o.Resolvers) == 0 {
		o.Resolvers = []string{"1.1.1.1:53", "8.8.8.8:53"}
	}
	if o.UserAgent == "" {
		o.UserAgent = "moat"
	}
	if o.StateDir == "" {
		return nil, errors.New("acme: no state directory")
	}
	domains := splitNames(strings.Join(o.Domains, ","))
	if len(domains) == 0 {
		return nil, errors.New("acme: no domains")
	}
	for _, d := range domains {
		if err := checkDomain(d); err != nil {
			return nil, fmt.Errorf("acme: domain %q: %w", d, err)
		}
	}
	kt, err := parseKeyType(o.KeyType)
	if err != nil {
		return nil, err
	}
	creds, from, err := loadCloudflareCredentials(o.Env, o.CloudflareCredentials)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	if from != "environment" {
		if fi, err := os.Stat(from); err == nil && fi.Mode().Perm()&0o077 != 0 {
			o.Logger.Warn("cloudflare credentials file is readable by others", "advice", config.PermissionAdvice(from, fi), "mode", fi.Mode().Perm().String())
		}
	}
	hc, err := acmeHTTPClient(o.Env)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	m := &Manager{
		o:          o,
		domains:    domains,
		dirURL:     resolveDirectory(o.Staging, o.DirectoryURL, o.StagingDirectoryURL),
		keyType:    kt,
		creds:      creds,
		httpClient: hc,
		log:        o.Logger.With("component", "acme", "domains", strings.Join(domains, ",")),
		now:        o.Now,
		ready:      make(chan struct{}),
		kick:       make(chan struct{}, 1),
	}
	m.dir = lineageDir(o.StateDir, m.dirURL)
	if err := ensureDir(filepath.Join(o.StateDir, "acme")); err != nil {
		return nil, err
	}
	if err := ensureDir(m.dir); err != nil {
		return nil, err
	}
	m.st = readPersistedStatus(m.dir)
	m.st.NextAttempt = time.Time{} // a restart retries at once (Retry-After is re-learnt)
	s, err := loadStored(m.dir)
	switch {
	case err == nil && !covers(s.leaf, domains):
		m.log.Info("stored certificate has other names; a new one will be requested", "stored", strings.Join(certNames(s.leaf), ","))
	case err == nil && !m.now().Before(s.leaf.NotAfter):
		m.log.Info("stored certificate has expired; a new one will be requested", "not_after", s.leaf.NotAfter)
	case err == nil:
		m.serve(s)
		m.st.NextRenewal = fallbackRenewAt(s.leaf.NotBefore, s.leaf.NotAfter)
		m.log.Info("serving stored certificate", "serial", s.leaf.SerialNumber.Text(16), "not_after", s.leaf.NotAfter)
	case !errors.Is(err, os.ErrNotExist):
		m.log.Warn("stored certificate unusable; a new one will be requested", "err", err)
	}
	return m, nil
}

func resolveDirectory(staging bool, dirURL, stagingURL string) string {
	switch {
	case staging && stagingURL != "":
		return stagingURL
	case dirURL != "":
		return dirURL
	case staging:
		return lego.LEDirectoryStaging
	}
	return lego.LEDirectoryProduction
}

func checkDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	if net.ParseIP(name) != nil {
		return errors.New("IP addresses cannot be validated over DNS-01")
	}
	if len(name) > 253 || !strings.Contains(name, ".") {
		return errors.New("not a fully qualified domain name")
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("bad label")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return errors.New("bad character (use the punycode form for IDNs)")
			}
		}
	}
	return nil
}

func parseKeyType(s string) (certcrypto.KeyType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "ec256", "p256", "ecdsa":
		return certcrypto.EC256, nil
	case "ec384", "p384":
		return certcrypto.EC384, nil
	case "rsa2048":
		return certcrypto.RSA2048, nil
	case "rsa3072":
		return certcrypto.RSA3072, nil
	case "rsa4096":
		return certcrypto.RSA4096, nil
	}
	return "", fmt.Errorf("acme: unknown key type %q (want ec256, ec384, rsa2048, rsa3072 or rsa4096)", s)
}

// acmeHTTPClient mirrors lego's default client but reads LEGO_CA_CERTIFICATES,
// LEGO_CA_SYSTEM_CERT_POOL and LEGO_CA_SERVER_NAME through env.
func acmeHTTPClient(env func(string) string) (*http.Client, error) {
	tc := &tls.Config{ServerName: env("LEGO_CA_SERVER_NAME"), MinVersion: tls.VersionTLS12}
	if p := env("LEGO_CA_CERTIFICATES"); p != "" {
		sys, _ := strconv.ParseBool(env("LEGO_CA_SYSTEM_CERT_POOL"))
		pool, err := lego.CreateCertPool(strings.Split(p, string(os.PathListSeparator)), sys)
		if err != nil {
			return nil, fmt.Errorf("LEGO_CA_CERTIFICATES: %w", err)
		}
		tc.RootCAs = pool
	}
	return &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   30 * time.Second,
			ResponseHeaderTimeout: 30 * time.Second,
			TLSClientConfig:       tc,
		},
	}, nil
}

// GetCertificate returns the certificate in service.
func (m *Manager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s := m.cur.Load(); s != nil {
		return s.tls, nil
	}
	return nil, errors.New("acme: no certificate obtained yet")
}

// Ready is closed once a valid certificate is being served.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

func (m *Manager) serve(s *stored) {
	m.cur.Store(s)
	m.readyOnce.Do(func() { close(m.ready) })
}

// Status reports the certificate in service and the renewal state.
func (m *Manager) Status() Status {
	m.mu.Lock()
	p := m.st
	m.mu.Unlock()
	st := Status{
		Domains: slices.Clone(m.domains), Staging: m.o.Staging, DirectoryURL: m.dirURL, Profile: m.o.Profile,
		NextRenewal: p.NextRenewal, NextAttempt: p.NextAttempt, Failures: p.Failures,
		LastError: p.LastError, LastErrorAt: p.LastErrorAt, LastRenewed: p.LastRenewed, ARI: p.ARI,
	}
	if s := m.cur.Load(); s != nil {
		fillCertStatus(&st, s)
	}
	return st
}

// Run obtains a certificate if none valid is stored, then renews it until ctx
// is done. Failures back off and never stop the valid certificate from being
// served. An ACME exchange in flight is finished before Run returns.
func (m *Manager) Run(ctx context.Context) error {
	for {
		d := max(m.step(ctx), 10*time.Millisecond)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-m.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// Renew forces a renewal now (a first issuance when nothing is served).
func (m *Manager) Renew(ctx context.Context) error {
	err := m.attempt(ctx)
	select {
	case m.kick <- struct{}{}:
	default:
	}
	return err
}

// step does what is due and returns how long to sleep.
func (m *Manager) step(ctx context.Context) time.Duration {
	if ctx.Err() != nil {
		return time.Hour
	}
	now := m.now()
	m.mu.Lock()
	backoffUntil, nextARI := m.st.NextAttempt, m.nextARI
	m.mu.Unlock()
	if now.Before(backoffUntil) {
		return m.wake(now)
	}
	s := m.cur.Load()
	if s == nil {
		_ = m.attempt(ctx)
		return m.wake(m.now())
	}
	if !now.Before(nextARI) {
		m.refreshPlan(s)
	}
	m.mu.Lock()
	due := !now.Before(m.st.NextRenewal)
	m.mu.Unlock()
	if due {
		_ = m.attempt(ctx)
	}
	return m.wake(m.now())
}

// wake is the time until the next renewal, ARI poll or retry.
func (m *Manager) wake(now time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.Load() == nil {
		return m.st.NextAttempt.Sub(now)
	}
	at := m.st.NextRenewal
	if m.st.NextAttempt.After(at) {
		at = m.st.NextAttempt
	}
	if m.nextARI.Before(at) {
		at = m.nextARI
	}
	return at.Sub(now)
}

func (m *Manager) jitteredInterval() time.Duration {
	iv := m.o.CheckInterval
	return iv - time.Duration(rand.Int64N(int64(iv)/10+1))
}

// refreshPlan asks ARI when to renew s and records the plan; without an
// answer the lifetime fallback stands.
func (m *Manager) refreshPlan(s *stored) {
	interval := m.jitteredInterval()
	var info *certificate.RenewalInfoResponse
	m.opMu.Lock()
	c, err := m.legoClient()
	if err == nil {
		info, err = c.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: s.leaf})
	}
	m.opMu.Unlock()
	if err != nil {
		info = nil
		m.log.Debug("renewal info unavailable; renewing by lifetime", "err", m.redact(err.Error()))
	} else if info.RetryAfter > 0 && info.RetryAfter < interval {
		interval = max(info.RetryAfter, min(time.Hour, m.o.CheckInterval))
	}
	now := m.now()
	at := planRenewal(now, s.leaf.NotBefore, s.leaf.NotAfter, info, interval)
	m.mu.Lock()
	m.st.ARI = info != nil
	m.st.NextRenewal = at
	m.nextARI = now.Add(interval)
	p := m.st
	m.mu.Unlock()
	m.persist(p)
}

// attempt runs one issuance or renewal and records its outcome.
func (m *Manager) attempt(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.opMu.Lock()
	start := time.Now()
	s, err := m.obtain()
	m.opMu.Unlock()
	now := m.now()
	m.mu.Lock()
	if err != nil {
		m.st.Failures++
		wait := backoffFor(m.o.Backoff, m.st.Failures, err)
		m.st.NextAttempt = now.Add(wait)
		m.st.LastError = m.redact(err.Error())
		m.st.LastErrorAt = now
		n, msg := m.st.Failures, m.st.LastError
		p := m.st
		m.mu.Unlock()
		m.persist(p)
		m.log.Error("certificate request failed: "+reason(err), "attempt", n, "retry_in", wait.String(), "err", msg)
		return fmt.Errorf("acme: %s: %s", reason(err), msg)
	}
	m.st.Failures = 0
	m.st.NextAttempt = time.Time{}
	m.st.LastRenewed = now
	m.st.NextRenewal = fallbackRenewAt(s.leaf.NotBefore, s.leaf.NotAfter)
	m.nextARI = now.Add(m.jitteredInterval())
	p := m.st
	m.mu.Unlock()
	m.persist(p)
	m.serve(s)
	m.log.Info("certificate obtained", "serial", s.leaf.SerialNumber.Text(16), "issuer", s.leaf.Issuer.CommonName,
		"not_after", s.leaf.NotAfter, "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

func (m *Manager) persist(p persistedStatus) {
	if err := writeJSONAtomic(filepath.Join(m.dir, fileStatus), p); err != nil {
		m.log.Warn("cannot record certificate status", "err", err)
	}
}

// redact scrubs credentials from text that may echo a request.
func (m *Manager) redact(s string) string {
	for _, v := range m.creds.secrets() {
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}

// obtain orders a certificate, replacing the served one when it has the same
// names (ARI renewal), and stores it. Caller holds opMu.
func (m *Manager) obtain() (*stored, error) {
	c, err := m.legoClient()
	if err != nil {
		return nil, err
	}
	// Deactivating authorizations after each order means a leaked account key
	// cannot issue without DNS control, and every renewal proves the DNS
	// credentials still work instead of failing weeks later.
	req := certificate.ObtainRequest{Domains: m.domains, Bundle: true, Profile: m.o.Profile, AlwaysDeactivateAuthorizations: true}
	if old := m.cur.Load(); old != nil && covers(old.leaf, m.domains) {
		if id, err := certificate.MakeARICertID(old.leaf); err == nil {
			req.ReplacesCertID = id
		}
	}
	res, err := c.Certificate.Obtain(req)
	if err != nil {
		var pd *acme.ProblemDetails
		if errors.As(err, &pd) && pd.Type == "urn:ietf:params:acme:error:accountDoesNotExist" {
			m.client, m.acct.Registration = nil, nil // register again next time
		}
		return nil, err
	}
	tc, err := parsePair(res.Certificate, res.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("CA returned an unusable certificate: %w", err)
	}
	if !covers(tc.Leaf, m.domains) {
		return nil, fmt.Errorf("CA returned a certificate for %v, want %v", certNames(tc.Leaf), m.domains)
	}
	s := &stored{tls: tc, leaf: tc.Leaf, meta: certMeta{
		Domains: m.domains, DirectoryURL: m.dirURL, Staging: m.o.Staging, Profile: m.o.Profile,
		CertURL: res.CertURL, Obtained: m.now().UTC(),
	}}
	// Key before certificate: a crash in between leaves a mismatched pair,
	// which loadStored rejects, rather than a new cert with an old key.
	for _, f := range []struct {
		name string
		data []byte
	}{{fileKey, res.PrivateKey}, {fileCert, res.Certificate}, {fileIssuer, res.IssuerCertificate}} {
		if err := writeFileAtomic(filepath.Join(m.dir, f.name), f.data); err != nil {
			m.log.Error("cannot store certificate; serving it from memory only", "err", err)
		}
	}
	if err := writeJSONAtomic(filepath.Join(m.dir, fileMeta), s.meta); err != nil {
		m.log.Error("cannot store certificate metadata", "err", err)
	}
	return s, nil
}

// account is the ACME account (registration.User).
type account struct {
	Email        string                 `json:"email,omitempty"`
	Registration *registration.Resource `json:"registration,omitempty"`
	key          crypto.PrivateKey
}

func (a *account) GetEmail() string                        { return a.Email }
func (a *account) GetRegistration() *registration.Resource { return a.Registration }
func (a *account) GetPrivateKey() crypto.PrivateKey        { return a.key }

// loadAccount reads or creates the account key (ECDSA P-256, never the
// certificate key) and any stored registration.
func (m *Manager) loadAccount() (*account, error) {
	keyPath := filepath.Join(m.dir, fileAccountKey)
	a := &account{Email: m.o.Email}
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		if a.key, err = certcrypto.ParsePEMPrivateKey(b); err != nil {
			return nil, fmt.Errorf("account key %s: unreadable", keyPath)
		}
	case errors.Is(err, os.ErrNotExist):
		k, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
		if err != nil {
			return nil, fmt.Errorf("account key: %w", err)
		}
		if err := writeFileAtomic(keyPath, certcrypto.PEMEncode(k)); err != nil {
			return nil, err
		}
		a.key = k
	default:
		return nil, fmt.Errorf("account key: %w", pathOnly(err))
	}
	if b, err := os.ReadFile(filepath.Join(m.dir, fileAccountJSON)); err == nil {
		var stored account
		if json.Unmarshal(b, &stored) == nil && stored.Registration != nil && stored.Registration.URI != "" {
			a.Registration = stored.Registration
		}
	}
	return a, nil
}

// legoClient returns a ready client with a registered account and the
// Cloudflare solver. Caller holds opMu.
func (m *Manager) legoClient() (*lego.Client, error) {
	if m.client != nil {
		return m.client, nil
	}
	if m.acct == nil {
		a, err := m.loadAccount()
		if err != nil {
			return nil, err
		}
		m.acct = a
	}
	cfg := lego.NewConfig(m.acct)
	cfg.CADirURL = m.dirURL
	cfg.UserAgent = m.o.UserAgent
	cfg.HTTPClient = m.httpClient
	cfg.Certificate.KeyType = m.keyType
	c, err := lego.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("ACME directory %s: %w", m.dirURL, err)
	}
	if m.acct.Registration == nil {
		reg, err := c.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
		if err != nil {
			return nil, fmt.Errorf("ACME account registration: %w", err)
		}
		m.acct.Registration = reg
		if err := writeJSONAtomic(filepath.Join(m.dir, fileAccountJSON), m.acct); err != nil {
			return nil, err
		}
		m.log.Info("ACME account registered", "directory", m.dirURL)
	}
	p, err := cloudflare.NewDNSProviderConfig(m.cloudflareConfig())
	if err != nil {
		return nil, err
	}
	if err := c.Challenge.SetDNS01Provider(p, m.dnsOptions()...); err != nil {
		return nil, err
	}
	m.client = c
	return c, nil
}

func (m *Manager) cloudflareConfig() *cloudflare.Config {
	env := m.o.Env
	dur := func(set time.Duration, name string, def time.Duration) time.Duration {
		if set > 0 {
			return set
		}
		for _, n := range []string{"CLOUDFLARE_" + name, "CF_" + name} {
			if v, err := strconv.Atoi(strings.TrimSpace(env(n))); err == nil && v > 0 {
				return time.Duration(v) * time.Second
			}
		}
		return def
	}
	ttl := 120
	for _, n := range []string{"CLOUDFLARE_TTL", "CF_TTL"} {
		if v, err := strconv.Atoi(strings.TrimSpace(env(n))); err == nil && v > ttl {
			ttl = v
			break
		}
	}
	return &cloudflare.Config{
		AuthToken:          m.creds.Token,
		ZoneToken:          m.creds.ZoneToken,
		AuthEmail:          m.creds.Email,
		AuthKey:            m.creds.APIKey,
		BaseURL:            strings.TrimSpace(env("CLOUDFLARE_BASE_URL")),
		TTL:                ttl,
		PropagationTimeout: dur(m.o.PropagationTimeout, "PROPAGATION_TIMEOUT", 2*time.Minute),
		PollingInterval:    dur(m.o.PollingInterval, "POLLING_INTERVAL", 2*time.Second),
		HTTPClient:         &http.Client{Timeout: dur(0, "HTTP_TIMEOUT", 30*time.Second)},
	}
}

// dnsOptions: lego keeps resolvers process-wide; each client sets them again
// so the last configured Manager wins, which is fine for one per process.
func (m *Manager) dnsOptions() []dns01.ChallengeOption {
	opts := []dns01.ChallengeOption{dns01.AddRecursiveNameservers(dns01.ParseNameservers(m.o.Resolvers))}
	if m.o.PropagationCheck != nil && !*m.o.PropagationCheck {
		return append(opts, dns01.DisableAuthoritativeNssPropagationRequirement(), dns01.PropagationWait(0, true))
	}
	opts = append(opts, dns01.RecursiveNSsPropagationRequirement())
	if m.o.SkipAuthoritativeCheck {
		opts = append(opts, dns01.DisableAuthoritativeNssPropagationRequirement())
	}
	return opts
}
