package certs

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Files in a lineage directory. A lineage is one ACME directory (CA
// environment): staging and production never share certificates or accounts.
const (
	fileAccountKey  = "account.key"
	fileAccountJSON = "account.json"
	fileCert        = "cert.pem" // leaf followed by the issuer chain
	fileKey         = "key.pem"
	fileIssuer      = "issuer.pem"
	fileMeta        = "cert.json"
	fileStatus      = "status.json"
)

// lineageDir names the per-directory-URL state directory, readable yet unique:
// <stateDir>/acme/<host>-<first 8 bytes of sha256(url)>.
func lineageDir(stateDir, dirURL string) string {
	host := "ca"
	if u, err := url.Parse(dirURL); err == nil && u.Host != "" {
		host = u.Host
	}
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '_'
	}, host)
	sum := sha256.Sum256([]byte(dirURL))
	return filepath.Join(stateDir, "acme", host+"-"+hex.EncodeToString(sum[:8]))
}

// writeFileAtomic writes data with mode 0600 through a temp file, fsync and
// rename, then fsyncs the directory, so readers see the old or the new file.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// ensureDir creates dir (and parents) 0700 and tightens an existing one.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	return nil
}

// certMeta is stored beside the certificate.
type certMeta struct {
	Domains      []string  `json:"domains"`
	DirectoryURL string    `json:"directory_url"`
	Staging      bool      `json:"staging"`
	Profile      string    `json:"profile,omitempty"`
	CertURL      string    `json:"cert_url,omitempty"`
	Obtained     time.Time `json:"obtained"`
}

// stored is a certificate ready to serve.
type stored struct {
	tls  *tls.Certificate
	leaf *x509.Certificate
	meta certMeta
}

// loadStored reads the lineage's certificate and key; the pair must match.
// Errors name files, never their content.
func loadStored(dir string) (*stored, error) {
	certPath, keyPath := filepath.Join(dir, fileCert), filepath.Join(dir, fileKey)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, pathOnly(err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, pathOnly(err)
	}
	c, err := parsePair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s with %s: %w", certPath, keyPath, err)
	}
	s := &stored{tls: c, leaf: c.Leaf}
	if b, err := os.ReadFile(filepath.Join(dir, fileMeta)); err == nil {
		_ = json.Unmarshal(b, &s.meta)
	}
	return s, nil
}

// parsePair builds a tls.Certificate with Leaf set. tls.X509KeyPair's errors
// describe structure only, never key bytes.
func parsePair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if c.Leaf == nil {
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, err
		}
		c.Leaf = leaf
	}
	return &c, nil
}

// covers reports whether leaf names exactly the wanted set.
func covers(leaf *x509.Certificate, domains []string) bool {
	have := certNames(leaf)
	want := slices.Clone(domains)
	slices.Sort(want)
	return slices.Equal(have, want)
}

func certNames(leaf *x509.Certificate) []string {
	seen := map[string]bool{}
	var names []string
	for _, n := range append([]string{leaf.Subject.CommonName}, leaf.DNSNames...) {
		n = strings.ToLower(n)
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// persistedStatus is what a running Manager records for `cert status`.
type persistedStatus struct {
	NextRenewal time.Time `json:"next_renewal,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Failures    int       `json:"failures,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LastRenewed time.Time `json:"last_renewed,omitzero"`
	ARI         bool      `json:"ari"`
}

func readPersistedStatus(dir string) persistedStatus {
	var p persistedStatus
	if b, err := os.ReadFile(filepath.Join(dir, fileStatus)); err == nil {
		_ = json.Unmarshal(b, &p)
	}
	return p
}

// ReadStatus reports the stored certificate and renewal state of the lineage
// selected by staging and directoryURL (empty: Let's Encrypt), without
// running a Manager or touching the network.
func ReadStatus(stateDir string, staging bool, directoryURL string) (Status, error) {
	dirURL := resolveDirectory(staging, directoryURL, "")
	dir := lineageDir(stateDir, dirURL)
	st := Status{Staging: staging, DirectoryURL: dirURL}
	p := readPersistedStatus(dir)
	st.NextRenewal, st.NextAttempt, st.Failures = p.NextRenewal, p.NextAttempt, p.Failures
	st.LastError, st.LastErrorAt, st.LastRenewed, st.ARI = p.LastError, p.LastErrorAt, p.LastRenewed, p.ARI
	s, err := loadStored(dir)
	if errors.Is(err, os.ErrNotExist) {
		// No certificate yet: the status still says why and when next.
		return st, nil
	}
	if err != nil {
		return st, err
	}
	fillCertStatus(&st, s)
	return st, nil
}

func fillCertStatus(st *Status, s *stored) {
	st.Names = certNames(s.leaf)
	st.Issuer = s.leaf.Issuer.CommonName
	st.Serial = s.leaf.SerialNumber.Text(16)
	st.NotBefore, st.NotAfter = s.leaf.NotBefore, s.leaf.NotAfter
	if len(st.Domains) == 0 {
		st.Domains = s.meta.Domains
	}
	if st.Profile == "" {
		st.Profile = s.meta.Profile
	}
}
