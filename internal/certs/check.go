package certs

import "fmt"

// CheckCredentials reads the Cloudflare credentials as NewManager does,
// without touching the state directory: check-config and serve refuse a
// missing or empty token with the same message.
func CheckCredentials(env func(string) string, iniPath string) error {
	if _, _, err := loadCloudflareCredentials(env, iniPath); err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	return nil
}
