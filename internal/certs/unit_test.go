package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certificate"
)

func TestParseCloudflareINI(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    cfCredentials
		wantErr string
	}{
		{"token", "dns_cloudflare_api_token = abc123\n", cfCredentials{Token: "abc123"}, ""},
		{"comments and blanks", "# c\n; c\n\n  dns_cloudflare_api_token=abc  \n", cfCredentials{Token: "abc"}, ""},
		{"quoted", `dns_cloudflare_api_token = "abc"`, cfCredentials{Token: "abc"}, ""},
		{"single quoted", `dns_cloudflare_api_token = 'abc'`, cfCredentials{Token: "abc"}, ""},
		{"colon", "dns_cloudflare_api_token: abc", cfCredentials{Token: "abc"}, ""},
		{"section header", "[default]\ndns_cloudflare_api_token = abc", cfCredentials{Token: "abc"}, ""},
		{"crlf and bom", "\ufeffdns_cloudflare_api_token = abc\r\n", cfCredentials{Token: "abc"}, ""},
		{"legacy key", "dns_cloudflare_email = a@b.c\ndns_cloudflare_api_key = k1", cfCredentials{Email: "a@b.c", APIKey: "k1"}, ""},
		{"upper-case key", "DNS_CLOUDFLARE_API_TOKEN = abc", cfCredentials{Token: "abc"}, ""},
		{"unknown keys ignored", "other = 1\ndns_cloudflare_api_token = abc", cfCredentials{Token: "abc"}, ""},
		{"value with equals", "dns_cloudflare_api_token = a=b", cfCredentials{Token: "a=b"}, ""},
		{"garbage line", "dns_cloudflare_api_token = abc\nsecretgarbage", cfCredentials{}, "line 2"},
		{"empty", "", cfCredentials{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCloudflareINI(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "secretgarbage") || strings.Contains(err.Error(), "abc") {
					t.Fatalf("error echoes file content: %v", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseCloudflareINI(f *testing.F) {
	for _, s := range []string{
		"dns_cloudflare_api_token = abc\n", "[x]\n# c\nk=v", "dns_cloudflare_email: a\r\n", "\ufeff'", "=\n=\n", "a\n\n\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := parseCloudflareINI(in)
		if err != nil {
			if c != (cfCredentials{}) {
				t.Fatal("credentials returned with an error")
			}
			// Errors carry a line number only, never content.
			if msg := err.Error(); !strings.HasPrefix(msg, "line ") {
				t.Fatalf("unexpected error form %q", msg)
			}
			return
		}
		for _, v := range []string{c.Token, c.ZoneToken, c.Email, c.APIKey} {
			if strings.ContainsAny(v, "\n") {
				t.Fatalf("value spans lines: %q", v)
			}
		}
	})
}

func mapEnv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadCloudflareCredentials(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokFile, []byte("filetoken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ini := filepath.Join(dir, "cf.ini")
	if err := os.WriteFile(ini, []byte("dns_cloudflare_api_token = initoken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyIni := filepath.Join(dir, "empty.ini")
	if err := os.WriteFile(emptyIni, []byte("# nothing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		env       map[string]string
		ini       string
		wantToken string
		wantZone  string
		wantErr   string
	}{
		{"CLOUDFLARE_DNS_API_TOKEN", map[string]string{"CLOUDFLARE_DNS_API_TOKEN": "t1", "CF_DNS_API_TOKEN": "t2"}, ini, "t1", "", ""},
		{"CF_DNS_API_TOKEN", map[string]string{"CF_DNS_API_TOKEN": "t2"}, ini, "t2", "", ""},
		{"_FILE", map[string]string{"CF_DNS_API_TOKEN_FILE": tokFile}, ini, "filetoken", "", ""},
		{"zone token", map[string]string{"CLOUDFLARE_DNS_API_TOKEN": "t1", "CLOUDFLARE_ZONE_API_TOKEN": "z1"}, ini, "t1", "z1", ""},
		{"ini", nil, ini, "initoken", "", ""},
		{"missing _FILE", map[string]string{"CLOUDFLARE_DNS_API_TOKEN_FILE": filepath.Join(dir, "nope")}, ini, "", "", "CLOUDFLARE_DNS_API_TOKEN_FILE"},
		{"nothing", nil, filepath.Join(dir, "missing.ini"), "", "", "no Cloudflare API token"},
		{"empty ini", nil, emptyIni, "", "", "no dns_cloudflare_api_token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := loadCloudflareCredentials(mapEnv(tc.env), tc.ini)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || c.Token != tc.wantToken || c.ZoneToken != tc.wantZone {
				t.Fatalf("got %+v, %v", c, err)
			}
		})
	}
}

func TestEnvOptions(t *testing.T) {
	tests := []struct {
		env     map[string]string
		domains []string
		email   string
		staging bool
	}{
		{map[string]string{"DOMAIN": "a.example.com"}, []string{"a.example.com"}, "", false},
		{map[string]string{"DOMAIN": " A.example.com, b.example.com  c.example.com,,a.example.com.", "EMAIL": " x@y.z ", "DRYRUN": "1"},
			[]string{"a.example.com", "b.example.com", "c.example.com"}, "x@y.z", true},
		{map[string]string{"DRYRUN": "false"}, nil, "", true}, // any non-empty value
		{nil, nil, "", false},
	}
	for i, tc := range tests {
		d, e, s := EnvOptions(mapEnv(tc.env))
		if !slices.Equal(d, tc.domains) || e != tc.email || s != tc.staging {
			t.Errorf("%d: got %v %q %v", i, d, e, s)
		}
	}
}

func ariResp(start, end time.Time) *certificate.RenewalInfoResponse {
	r := &certificate.RenewalInfoResponse{}
	r.SuggestedWindow = acme.Window{Start: start, End: end}
	return r
}

func TestPlanRenewal(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name     string
		now      time.Time
		life     time.Duration
		ari      *certificate.RenewalInfoResponse
		want     time.Time
		wantFrom time.Time // for random picks: want in [wantFrom, want]
	}{
		{"90d no ARI: 1/3 left", t0, 90 * day, nil, t0.Add(60 * day), time.Time{}},
		{"45d no ARI", t0, 45 * day, nil, t0.Add(30 * day), time.Time{}},
		{"64d no ARI", t0, 64 * day, nil, t0.Add(64 * day).Add(-64 * day / 3), time.Time{}},
		{"6d no ARI: half left", t0, 6 * day, nil, t0.Add(3 * day), time.Time{}},
		{"10d no ARI: half left", t0, 10 * day, nil, t0.Add(5 * day), time.Time{}},
		{"160h no ARI", t0, 160 * time.Hour, nil, t0.Add(80 * time.Hour), time.Time{}},
		{"ARI window past: now", t0.Add(10 * day), 90 * day, ariResp(t0.Add(day), t0.Add(2*day)), t0.Add(10 * day), time.Time{}},
		{"ARI window within next check: random pick", t0.Add(50 * day), 90 * day,
			ariResp(t0.Add(50*day+time.Hour), t0.Add(50*day+2*time.Hour)), t0.Add(50*day + 2*time.Hour), t0.Add(50*day + time.Hour)},
		{"ARI window far: window start", t0, 90 * day, ariResp(t0.Add(40*day), t0.Add(42*day)), t0.Add(40 * day), time.Time{}},
		{"ARI later than emergency: capped", t0, 90 * day, ariResp(t0.Add(89*day), t0.Add(90*day)), t0.Add(90 * day).Add(-90 * day / 20), time.Time{}},
		{"ARI bogus window: fallback", t0, 90 * day, ariResp(t0.Add(5*day), t0.Add(4*day)), t0.Add(60 * day), time.Time{}},
		{"ARI window after expiry: fallback", t0, 90 * day, ariResp(t0.Add(100*day), t0.Add(101*day)), t0.Add(60 * day), time.Time{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := planRenewal(tc.now, t0, t0.Add(tc.life), tc.ari, 12*time.Hour)
			if tc.wantFrom.IsZero() {
				if !got.Equal(tc.want) {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
				return
			}
			if got.Before(tc.wantFrom) || got.After(tc.want) {
				t.Fatalf("got %v, want within [%v, %v]", got, tc.wantFrom, tc.want)
			}
		})
	}
}

func TestBackoffFor(t *testing.T) {
	sched := []time.Duration{time.Minute, 10 * time.Minute, 100 * time.Minute, 24 * time.Hour}
	plain := errors.New("boom")
	rl := func(v string) error {
		return fmt.Errorf("wrapped: %w", &acme.RateLimitedError{ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr}, RetryAfter: v})
	}
	tests := []struct {
		n    int
		err  error
		want time.Duration
	}{
		{1, plain, time.Minute}, {2, plain, 10 * time.Minute}, {3, plain, 100 * time.Minute},
		{4, plain, 24 * time.Hour}, {40, plain, 24 * time.Hour},
		{1, rl("3600"), time.Hour},
		{4, rl("60"), 24 * time.Hour}, // the schedule is longer
		{1, rl("bogus"), time.Minute},
		{1, rl("99999999"), 7 * 24 * time.Hour}, // capped
	}
	for i, tc := range tests {
		if got := backoffFor(sched, tc.n, tc.err); got != tc.want {
			t.Errorf("%d: backoffFor(%d) = %v, want %v", i, tc.n, got, tc.want)
		}
	}
	if got := backoffFor(nil, 1, plain); got != time.Minute {
		t.Errorf("default schedule starts at %v", got)
	}
}

func TestReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{errors.New("cloudflare: failed to find zone example.test.: [status code 403] 10000: Authentication error"), "rejected the API token"},
		{errors.New("cloudflare: failed to find zone example.test.: zone could not be found"), "no (single) zone"},
		{errors.New("could not find the start of authority for '_acme-challenge.x.'"), "no zone (SOA)"},
		{errors.New("propagation: time limit exceeded: last error: NS x did not return"), "propagation timeout"},
		{&acme.RateLimitedError{ProblemDetails: &acme.ProblemDetails{}}, "rate limited"},
		{&acme.ProblemDetails{Type: "urn:ietf:params:acme:error:rejectedIdentifier"}, "rejectedIdentifier"},
		{errors.New("other"), "certificate request failed"},
	}
	for _, tc := range tests {
		if got := reason(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestWriteFileAtomicPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	p := filepath.Join(dir, "f")
	for _, content := range []string{"one", "two"} {
		if err := writeFileAtomic(p, []byte(content)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != content {
			t.Fatalf("read %q %v", b, err)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", di.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ensureDir(dir); err != nil {
		t.Fatal(err)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Fatalf("ensureDir left mode %v", di.Mode().Perm())
	}
}

func TestLineageDir(t *testing.T) {
	a := lineageDir("/s", "https://acme-v02.api.letsencrypt.org/directory")
	b := lineageDir("/s", "https://acme-staging-v02.api.letsencrypt.org/directory")
	c := lineageDir("/s", "https://127.0.0.1:14000/dir")
	if a == b || !strings.HasPrefix(filepath.Base(a), "acme-v02.api.letsencrypt.org-") || !strings.HasPrefix(filepath.Base(c), "127.0.0.1_14000-") {
		t.Fatalf("%s %s %s", a, b, c)
	}
	if resolveDirectory(true, "", "") == resolveDirectory(false, "", "") {
		t.Fatal("staging and production resolve to the same directory")
	}
}

func TestNewManagerValidates(t *testing.T) {
	base := func() ACMEOptions {
		return ACMEOptions{
			Domains: []string{"mqtt.example.com"}, StateDir: t.TempDir(),
			Env:    mapEnv(map[string]string{"CLOUDFLARE_DNS_API_TOKEN": "sekrit-token"}),
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
	}
	tests := []struct {
		name    string
		mod     func(*ACMEOptions)
		wantErr string
	}{
		{"ok", func(*ACMEOptions) {}, ""},
		{"wildcard ok", func(o *ACMEOptions) { o.Domains = []string{"*.example.com", "example.com"} }, ""},
		{"no domains", func(o *ACMEOptions) { o.Domains = nil }, "no domains"},
		{"ip", func(o *ACMEOptions) { o.Domains = []string{"192.0.2.1"} }, "IP addresses"},
		{"bare label", func(o *ACMEOptions) { o.Domains = []string{"localhost"} }, "fully qualified"},
		{"bad char", func(o *ACMEOptions) { o.Domains = []string{"a_b.example.com"} }, "bad character"},
		{"no state", func(o *ACMEOptions) { o.StateDir = "" }, "state directory"},
		{"key type", func(o *ACMEOptions) { o.KeyType = "dsa" }, "unknown key type"},
		{"ec384", func(o *ACMEOptions) { o.KeyType = "EC384" }, ""},
		{"no credentials", func(o *ACMEOptions) {
			o.Env = mapEnv(nil)
			o.CloudflareCredentials = filepath.Join(o.StateDir, "none.ini")
		}, "no Cloudflare API token"},
		{"bad CA file", func(o *ACMEOptions) {
			o.Env = mapEnv(map[string]string{"CLOUDFLARE_DNS_API_TOKEN": "sekrit-token", "LEGO_CA_CERTIFICATES": "/nonexistent.pem"})
		}, "LEGO_CA_CERTIFICATES"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			m, err := NewManager(o)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if st := m.Status(); st.Serial != "" || st.DirectoryURL == "" {
					t.Fatalf("status %+v", st)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "sekrit") {
				t.Fatalf("err = %v, want %q without the token", err, tc.wantErr)
			}
		})
	}
}

// selfSigned returns PEM cert and key for name with the given serial.
func selfSigned(t *testing.T, name string, serial int64, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func fileSerial(t *testing.T, f *FileSource) int64 {
	t.Helper()
	c, err := f.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Int64()
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	write := func(serial int64) {
		c, k := selfSigned(t, "mqtt.example.com", serial, time.Now().Add(48*time.Hour))
		if err := writeFileAtomic(kf, k); err != nil {
			t.Fatal(err)
		}
		if err := writeFileAtomic(cf, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewFileSource(cf, kf, nil); err == nil || !strings.Contains(err.Error(), cf) {
		t.Fatalf("missing files: %v", err)
	}
	write(1)
	logs := &logBuf{}
	f, err := NewFileSource(cf, kf, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if fileSerial(t, f) != 1 {
		t.Fatal("wrong certificate")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Watch(ctx, 10*time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	write(2)
	waitFor(t, "reload after change", 10*time.Second, func() bool { return fileSerial(t, f) == 2 })

	// A broken key keeps the previous certificate in service; the error names
	// files, never key material.
	_, k3 := selfSigned(t, "mqtt.example.com", 3, time.Now().Add(time.Hour))
	if err := writeFileAtomic(kf, k3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "error logged", 10*time.Second, func() bool { return strings.Contains(logs.String(), "cannot be loaded") })
	if fileSerial(t, f) != 2 {
		t.Fatal("a broken pair replaced the served certificate")
	}
	if err := f.Reload(); err == nil || !strings.Contains(err.Error(), kf) || strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatalf("Reload error %v", err)
	}
	if err := os.WriteFile(cf, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Reload(); err == nil || fileSerial(t, f) != 2 {
		t.Fatalf("garbage cert: %v", err)
	}
	// Fixed again: picked up by the watcher.
	write(4)
	waitFor(t, "recovery", 10*time.Second, func() bool { return fileSerial(t, f) == 4 })
}

func TestGetCertificateBeforeIssuance(t *testing.T) {
	m, err := NewManager(ACMEOptions{
		Domains: []string{"mqtt.example.com"}, StateDir: t.TempDir(),
		Env:    mapEnv(map[string]string{"CF_DNS_API_TOKEN": "x"}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.GetCertificate(nil); err == nil {
		t.Fatal("certificate served before issuance")
	}
	if st, err := ReadStatus(t.TempDir(), false, ""); err != nil || st.Serial != "" {
		t.Fatalf("ReadStatus on an empty state dir: %+v, %v; want no certificate, no error", st, err)
	}
}

func TestLegoLogger(t *testing.T) {
	logs := &logBuf{}
	l := LegoLogger(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.Printf("[INFO] [%s] acme: Obtaining", "a.example.com")
	l.Println("[WARN] cleaning up failed")
	out := logs.String()
	if !strings.Contains(out, `level=DEBUG msg="[a.example.com] acme: Obtaining"`) || !strings.Contains(out, `level=WARN msg="cleaning up failed"`) {
		t.Fatalf("got %s", out)
	}
}
