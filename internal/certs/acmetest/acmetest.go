// Package acmetest runs a complete DNS-01 issuance environment on loopback
// for tests: Pebble (in process) as the ACME CA, a fake Cloudflare API that
// lego's real Cloudflare provider talks to, and a DNS server answering SOA
// and TXT for the test zone from the fake API's records. Pebble's validation
// and lego's zone lookup and propagation checks both use that DNS server.
package acmetest

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Zone is the DNS zone every test name lives in.
const Zone = "example.test"

// Token is the API token the fake Cloudflare accepts.
const Token = "test-token-0123456789abcdef"

// Profile is the Pebble profile tests request (90-day certificates).
const Profile = "test"

// ShortProfile issues 6-day certificates.
const ShortProfile = "short"

// SetEnv sets the process environment Pebble and lego read at construction.
// Call it before NewCA (t.Setenv forbids parallel tests, as lego's resolver
// settings are process-wide anyway).
func SetEnv(t testing.TB) {
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	t.Setenv("PEBBLE_AUTHZREUSE", "0")
	t.Setenv("LEGO_DISABLE_CNAME_SUPPORT", "true")
}

// CA is an in-process Pebble.
type CA struct {
	DirURL     string // ACME directory URL
	RootsFile  string // PEM of the HTTPS server certificate, for LEGO_CA_CERTIFICATES
	pebbleCA   *ca.CAImpl
	mgmt       http.Handler
	orders     atomic.Int64
	rateLimit  atomic.Int64 // Retry-After seconds; 0: off
	rateLimits atomic.Int64
}

// NewCA starts Pebble on 127.0.0.1 validating DNS-01 through dnsAddr.
func NewCA(t testing.TB, dnsAddr string) *CA {
	t.Helper()
	logger := log.New(io.Discard, "", 0)
	if testing.Verbose() && os.Getenv("ACMETEST_PEBBLE_LOG") != "" {
		logger = log.New(os.Stderr, "pebble ", log.Lmicroseconds)
	}
	store := db.NewMemoryStore()
	profiles := map[string]ca.Profile{
		Profile:      {Description: "90 days", ValidityPeriod: 90 * 24 * 3600, PromoteCommonName: true},
		ShortProfile: {Description: "6 days", ValidityPeriod: 6 * 24 * 3600},
	}
	c := &CA{}
	c.pebbleCA = ca.New(logger, store, "", "ecdsa", 0, 1, profiles)
	v := va.New(logger, 0, 0, false, dnsAddr, store)
	w := wfe.New(logger, store, v, c.pebbleCA, nil, false, false, 1, 1)
	acmeHandler := w.Handler()
	c.mgmt = w.ManagementHandler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			if ra := c.rateLimit.Load(); ra > 0 {
				c.rateLimits.Add(1)
				rw.Header().Set("Content-Type", "application/problem+json")
				rw.Header().Set("Retry-After", fmt.Sprint(ra))
				rw.WriteHeader(http.StatusTooManyRequests)
				fmt.Fprintf(rw, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates already issued; retry after %ds","status":429}`, ra)
				return
			}
			c.orders.Add(1)
		}
		if serial, ok := strings.CutPrefix(r.URL.Path, "/certZ/"); ok && r.Method == http.MethodPost {
			// Pebble records which order issued a certificate only after the
			// order turns valid, in a goroutine of its own; a renewal that
			// names the certificate it replaces straight after downloading
			// it would be refused. Real CAs see renewals days later.
			for i := 0; i < 500; i++ {
				if _, err := store.GetOrderByIssuedSerial(serial); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/chalZ/") {
			// Pebble sends no Retry-After here and lego then waits 5 s.
			rw.Header().Set("Retry-After", "1")
		}
		acmeHandler.ServeHTTP(rw, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c.DirURL = srv.URL + wfe.DirectoryPath
	c.RootsFile = filepath.Join(t.TempDir(), "acme-server.pem")
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(c.RootsFile, p, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// Orders counts new-order requests Pebble accepted.
func (c *CA) Orders() int { return int(c.orders.Load()) }

// RateLimited counts new-order requests answered with 429.
func (c *CA) RateLimited() int { return int(c.rateLimits.Load()) }

// SetRateLimit makes new-order answer 429 rateLimited with Retry-After
// seconds; 0 turns it off.
func (c *CA) SetRateLimit(retryAfterSeconds int) { c.rateLimit.Store(int64(retryAfterSeconds)) }

// RootPEM is the CA's root certificate (issuer of the chain), PEM.
func (c *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.pebbleCA.GetRootCert(0).Cert.Raw})
}

// SetRenewalInfo forces Pebble's ARI answer for the certificate certPEM.
func (c *CA) SetRenewalInfo(t testing.TB, certPEM []byte, start, end time.Time) {
	t.Helper()
	ari := fmt.Sprintf(`{"suggestedWindow":{"start":%q,"end":%q}}`, start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339))
	body, _ := json.Marshal(map[string]string{"Certificate": string(certPEM), "ARIResponse": ari})
	req := httptest.NewRequest(http.MethodPost, "/set-renewal-info/", bytes.NewReader(body))
	req.Header.Set("User-Agent", "acmetest")
	rec := httptest.NewRecorder()
	c.mgmt.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("set-renewal-info: %d %s", rec.Code, rec.Body.String())
	}
}

// Cloudflare is a fake Cloudflare v4 API holding TXT records, plus the DNS
// server that publishes them.
type Cloudflare struct {
	BaseURL string // for CLOUDFLARE_BASE_URL
	DNSAddr string // host:port of the DNS server (UDP and TCP)

	mu      sync.Mutex
	records map[string]txtRecord // id -> record
	nextID  int
	token   string
	noZone  bool
	hideTXT bool
	creates int
	deletes int
}

type txtRecord struct{ name, value string }

// NewCloudflare starts the fake API and the DNS server on 127.0.0.1.
func NewCloudflare(t testing.TB) *Cloudflare {
	t.Helper()
	f := &Cloudflare{records: map[string]txtRecord{}, token: Token}
	api := httptest.NewServer(http.HandlerFunc(f.serveAPI))
	t.Cleanup(api.Close)
	f.BaseURL = api.URL + "/client/v4"
	f.DNSAddr = f.startDNS(t)
	return f
}

// SetToken changes the token the API accepts.
func (f *Cloudflare) SetToken(tok string) { f.mu.Lock(); f.token = tok; f.mu.Unlock() }

// SetMissingZone makes the zone lookup return no zone.
func (f *Cloudflare) SetMissingZone(v bool) { f.mu.Lock(); f.noZone = v; f.mu.Unlock() }

// SetHideTXT makes DNS never show TXT records (propagation never completes).
func (f *Cloudflare) SetHideTXT(v bool) { f.mu.Lock(); f.hideTXT = v; f.mu.Unlock() }

// Counts returns TXT records created and deleted so far.
func (f *Cloudflare) Counts() (creates, deletes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates, f.deletes
}

// Live returns the number of TXT records currently published.
func (f *Cloudflare) Live() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.records) }

func cfError(rw http.ResponseWriter, status, code int, msg string) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	fmt.Fprintf(rw, `{"success":false,"errors":[{"code":%d,"message":%q}],"messages":[],"result":null}`, code, msg)
}

func cfResult(rw http.ResponseWriter, result any) {
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(map[string]any{"success": true, "errors": []any{}, "messages": []any{}, "result": result})
}

func (f *Cloudflare) serveAPI(rw http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		cfError(rw, http.StatusForbidden, 10000, "Authentication error")
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/client/v4")
	parts := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case r.Method == http.MethodGet && path == "/zones":
		if f.noZone || strings.TrimSuffix(r.URL.Query().Get("name"), ".") != Zone {
			cfResult(rw, []any{})
			return
		}
		cfResult(rw, []any{map[string]string{"id": "zone1", "name": Zone}})
	case r.Method == http.MethodPost && len(parts) == 3 && parts[0] == "zones" && parts[2] == "dns_records":
		var rec struct{ Name, Type, Content string }
		if err := json.NewDecoder(r.Body).Decode(&rec); err != nil || rec.Type != "TXT" {
			cfError(rw, http.StatusBadRequest, 9000, "bad record")
			return
		}
		f.nextID++
		id := fmt.Sprintf("rec%d", f.nextID)
		f.records[id] = txtRecord{name: dns.Fqdn(strings.ToLower(rec.Name)), value: strings.Trim(rec.Content, `"`)}
		f.creates++
		cfResult(rw, map[string]any{"id": id, "name": rec.Name, "type": "TXT", "content": rec.Content})
	case r.Method == http.MethodDelete && len(parts) == 4 && parts[0] == "zones" && parts[2] == "dns_records":
		delete(f.records, parts[3])
		f.deletes++
		cfResult(rw, map[string]string{"id": parts[3]})
	default:
		cfError(rw, http.StatusNotFound, 7003, "no route")
	}
}

func (f *Cloudflare) serveDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	apex := dns.Fqdn(Zone)
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: apex, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
		Ns: "ns." + apex, Mbox: "hostmaster." + apex, Serial: 1, Refresh: 60, Retry: 60, Expire: 600, Minttl: 60}
	if len(q.Question) == 1 {
		qn := strings.ToLower(q.Question[0].Name)
		switch {
		case !dns.IsSubDomain(apex, qn):
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeSOA && qn == apex:
			m.Answer = append(m.Answer, soa)
		case q.Question[0].Qtype == dns.TypeTXT:
			f.mu.Lock()
			if !f.hideTXT {
				for _, rec := range f.records {
					if rec.name == qn {
						m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0}, Txt: []string{rec.value}})
					}
				}
			}
			f.mu.Unlock()
		}
		if len(m.Answer) == 0 && m.Rcode == dns.RcodeSuccess {
			m.Ns = append(m.Ns, soa)
		}
	}
	_ = w.WriteMsg(m)
}

// startDNS serves UDP and TCP on one loopback port.
func (f *Cloudflare) startDNS(t testing.TB) string {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		h := dns.HandlerFunc(f.serveDNS)
		udp := &dns.Server{PacketConn: pc, Handler: h}
		tcp := &dns.Server{Listener: ln, Handler: h}
		go func() { _ = udp.ActivateAndServe() }()
		go func() { _ = tcp.ActivateAndServe() }()
		t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
		return pc.LocalAddr().String()
	}
	t.Fatal("no free loopback port for DNS on both UDP and TCP")
	return ""
}
