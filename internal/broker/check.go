package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"

	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/cryptfs"
)

// Check runs every check New and Start make before they open anything:
// the password and ACL files, the certificate files, the ACME credentials
// and the persistence key file and mount point. check-config calls it, and
// New and Reload run the same functions, so what serve refuses check-config
// refuses with the same message. It starts nothing and changes nothing.
func Check(cfg *config.Config, env func(string) string) ([]ScopeSummary, error) {
	if env == nil {
		env = func(string) string { return "" }
	}
	_, sums, err := LoadPolicy(cfg)
	_, cerr := loadCertFiles(cfg, slog.New(slog.DiscardHandler))
	return sums, errors.Join(checkUsers(cfg), err, cerr, checkACME(cfg, env), checkPersistence(cfg, env))
}

// logSettingsChanged reports a change of log_dest, log_type or log_format.
func logSettingsChanged(old, next config.Log) bool {
	return old.Format != next.Format || !slices.Equal(old.Dests, next.Dests) || !maps.Equal(old.Types, next.Types)
}

// loadCertFiles reads every listener's certfile and keyfile.
func loadCertFiles(cfg *config.Config, log *slog.Logger) (map[string]*certs.FileSource, error) {
	files := map[string]*certs.FileSource{}
	var errs []error
	for _, l := range cfg.Listeners {
		if l.TLS.CertFile == "" {
			continue
		}
		f, err := certs.NewFileSource(l.TLS.CertFile, l.TLS.KeyFile, log)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s (%s): %w", l.ID, l.Pos, err))
			continue
		}
		files[l.ID] = f
	}
	return files, errors.Join(errs...)
}

// checkACME refuses tls acme without a usable Cloudflare token.
func checkACME(cfg *config.Config, env func(string) string) error {
	if !cfg.UsesACME() {
		return nil
	}
	return certs.CheckCredentials(env, cfg.ACME.CloudflareCredentials)
}

// checkPersistence checks the key file, mount point and encrypted
// directory as the mount would, without mounting.
func checkPersistence(cfg *config.Config, env func(string) string) error {
	ps := cfg.Persistence
	if !ps.Enabled {
		return nil
	}
	if !ps.Encrypted() {
		if st, err := os.Stat(ps.Location); err == nil && !st.IsDir() {
			return fmt.Errorf("persistence (%s): persistence_location %s is not a directory", ps.Pos, ps.Location)
		}
		return nil
	}
	err := cryptfs.Preflight(cryptfs.Options{CipherDir: ps.CipherDir, MountPoint: ps.Location, KeyFile: ps.KeyFile, ScryptN: scryptN(env)})
	if err != nil {
		return fmt.Errorf("persistence (%s): %w", ps.Pos, err)
	}
	return nil
}
