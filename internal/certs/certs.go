// Package certs serves TLS certificates to listeners: from files written by
// an external tool (FileSource), or obtained and renewed automatically over
// ACME with DNS-01 challenges on Cloudflare (Manager). Both hand certificates
// out through GetCertificate and swap them atomically, so new handshakes see
// a new certificate at once while established connections are unaffected.
package certs

import (
	"crypto/tls"
	"strings"
	"time"
)

// Source serves certificates to TLS listeners through GetCertificate,
// hot-swapped atomically.
type Source interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

var (
	_ Source = (*FileSource)(nil)
	_ Source = (*Manager)(nil)
)

// Status describes the certificate a Manager serves (or last stored) and the
// state of its renewal.
type Status struct {
	Domains      []string  `json:"domains"`             // names the certificate was asked for
	Names        []string  `json:"names,omitempty"`     // names in the served certificate
	Issuer       string    `json:"issuer,omitempty"`    // issuer common name
	Serial       string    `json:"serial,omitempty"`    // hex serial number
	NotBefore    time.Time `json:"not_before,omitzero"` // validity start
	NotAfter     time.Time `json:"not_after,omitzero"`  // expiry
	NextRenewal  time.Time `json:"next_renewal,omitzero"`
	NextAttempt  time.Time `json:"next_attempt,omitzero"` // set while backing off after a failure
	Failures     int       `json:"failures,omitempty"`    // consecutive failed attempts
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	LastRenewed  time.Time `json:"last_renewed,omitzero"`
	ARI          bool      `json:"ari"` // the CA answered a renewal-info query
	Staging      bool      `json:"staging"`
	DirectoryURL string    `json:"directory_url"`
	Profile      string    `json:"profile,omitempty"`
}

// EnvOptions reads the container-style settings: DOMAIN (names separated by
// commas and/or spaces), EMAIL, and DRYRUN (any non-empty value selects the
// staging CA).
func EnvOptions(env func(string) string) (domains []string, email string, staging bool) {
	domains = splitNames(env("DOMAIN"))
	return domains, strings.TrimSpace(env("EMAIL")), env("DRYRUN") != ""
}

func splitNames(s string) []string {
	f := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == ';'
	})
	var out []string
	seen := map[string]bool{}
	for _, n := range f {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}
