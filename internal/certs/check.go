package certs

import (
	"fmt"
	"time"
)

// CheckCredentials reads the Cloudflare credentials as NewManager does,
// without touching the state directory: check-config and serve refuse a
// missing or empty token with the same message.
func CheckCredentials(env func(string) string, iniPath string) error {
	if _, _, err := loadCloudflareCredentials(env, iniPath); err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	return nil
}

// LoadStored serves the certificate stored in the state directory when it
// is newer than the one in service and covers the domains: `moat cert
// renew` run beside a running broker stores one, and a SIGHUP (a reload)
// brings it into service and clears the retry back-off of the failures it
// replaces. It reports whether a new certificate is now served.
func (m *Manager) LoadStored() bool {
	s, err := loadStored(m.dir)
	if err != nil || !covers(s.leaf, m.domains) || !m.now().Before(s.leaf.NotAfter) {
		return false
	}
	if cur := m.cur.Load(); cur != nil && !s.leaf.NotAfter.After(cur.leaf.NotAfter) {
		return false
	}
	m.mu.Lock()
	m.st.Failures, m.st.NextAttempt = 0, time.Time{}
	m.st.NextRenewal = fallbackRenewAt(s.leaf.NotBefore, s.leaf.NotAfter)
	m.mu.Unlock()
	m.serve(s)
	m.log.Info("serving the stored certificate after a reload", "serial", s.leaf.SerialNumber.Text(16), "not_after", s.leaf.NotAfter)
	return true
}
