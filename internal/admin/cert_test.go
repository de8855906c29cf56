package admin

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCertificateCheck(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	cert := func(from, to time.Time) *x509.Certificate {
		return &x509.Certificate{
			Subject:   pkix.Name{CommonName: "cn.example"},
			DNSNames:  []string{"mqtt.example.com"},
			NotBefore: from, NotAfter: to,
		}
	}
	tests := []struct {
		name    string
		cert    *x509.Certificate
		err     error
		wantErr string
	}{
		{"fresh", cert(now.Add(-day), now.Add(60*day)), nil, ""},
		{"just over the margin", cert(now.Add(-day), now.Add(7*day+time.Second)), nil, ""},
		{"at the margin", cert(now.Add(-day), now.Add(7*day)), nil, "mqtt.example.com expires at 2026-11-29T12:00:00Z"},
		{"expired", cert(now.Add(-90*day), now.Add(-time.Second)), nil, "expired at"},
		{"not yet valid", cert(now.Add(time.Hour), now.Add(90*day)), nil, "not valid before"},
		{"none", nil, nil, "none loaded yet"},
		{"source error", nil, errors.New("acme pending"), "certificate: acme pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := certificateCheck(func() (*x509.Certificate, error) { return tt.cert, tt.err }, 7*day, func() time.Time { return now })
			err := check(context.Background())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	if err := CertificateCheck(func() (*x509.Certificate, error) { return cert(time.Now().Add(-day), time.Now().Add(30*day)), nil }, 7*day)(context.Background()); err != nil {
		t.Fatalf("CertificateCheck with the real clock: %v", err)
	}
}
