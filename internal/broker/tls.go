package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
	"github.com/moat-mqtt/moat/internal/listen"
)

// certReloadEvery is how often certificate files are checked for changes
// (an external certbot renewing them).
const certReloadEvery = 30 * time.Second

// ACMEOptions maps the configuration onto the certificate manager's options.
func ACMEOptions(cfg *config.Config, env func(string) string) certs.ACMEOptions {
	a := cfg.ACME
	check := a.PropagationCheck
	return certs.ACMEOptions{
		Domains:               a.Domains,
		Email:                 a.Email,
		Staging:               a.Staging,
		DirectoryURL:          a.Directory,
		Profile:               a.Profile,
		KeyType:               a.KeyType,
		Resolvers:             a.DNSResolvers,
		PropagationCheck:      &check,
		StateDir:              a.StateDir,
		CloudflareCredentials: a.CloudflareCredentials,
		Env:                   env,
	}
}

func (b *Broker) provisionCerts() error {
	files, err := loadCertFiles(b.cfg, b.log)
	if err != nil {
		return err
	}
	b.files = files
	if !b.cfg.UsesACME() {
		return nil
	}
	if err := checkACME(b.cfg, b.env); err != nil {
		return err
	}
	o := ACMEOptions(b.cfg, b.env)
	o.Logger = b.log // the manager adds component=acme itself
	m, err := certs.NewManager(o)
	if err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	b.acme = m
	return nil
}

func (b *Broker) acmeReady() bool {
	select {
	case <-b.acme.Ready():
		return true
	default:
		return false
	}
}

// UsesTLS reports whether any listener serves TLS.
func (b *Broker) UsesTLS() bool {
	for _, l := range b.cfg.Listeners {
		if l.TLS.Enabled() {
			return true
		}
	}
	return false
}

func (b *Broker) certSource(l *config.Listener) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	if l.TLS.ACME {
		return b.acme.GetCertificate, nil
	}
	if b.fileSource(l.ID) == nil {
		return nil, fmt.Errorf("listener %s: no certificate", l.ID)
	}
	// Looked up per handshake: a reload may point the listener at new files.
	id := l.ID
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		f := b.fileSource(id)
		if f == nil {
			return nil, fmt.Errorf("listener %s: no certificate", id)
		}
		return f.GetCertificate(hello)
	}, nil
}

func (b *Broker) fileSource(id string) *certs.FileSource {
	b.certMu.RLock()
	defer b.certMu.RUnlock()
	return b.files[id]
}

// changedCertFiles loads the certificate files of listeners whose certfile
// or keyfile a reload changes; any failure refuses the reload.
func (b *Broker) changedCertFiles(cfg *config.Config) (map[string]*certs.FileSource, error) {
	was := map[string]*config.Listener{}
	for _, l := range b.live.Listeners {
		was[l.ID] = l
	}
	changed := &config.Config{}
	for _, l := range cfg.Listeners {
		if o := was[l.ID]; l.TLS.CertFile != "" && (o == nil || o.TLS.CertFile != l.TLS.CertFile || o.TLS.KeyFile != l.TLS.KeyFile) {
			changed.Listeners = append(changed.Listeners, l)
		}
	}
	return loadCertFiles(changed, b.log)
}

// swapCertFiles puts new certificate sources in force and re-reads the
// unchanged ones (a renewal written in place).
func (b *Broker) swapCertFiles(fresh map[string]*certs.FileSource) {
	b.certMu.Lock()
	var keep []string
	for id := range b.files {
		if _, ok := fresh[id]; !ok {
			keep = append(keep, id)
		}
	}
	for id, f := range fresh {
		b.files[id] = f
		if stop, ok := b.watches[id]; ok {
			stop()
			b.watchFile(id, f)
		}
	}
	b.certMu.Unlock()
	for _, id := range keep {
		if err := b.fileSource(id).Reload(); err != nil {
			b.log.Error("certificate reload failed, previous certificate kept", "listener", id, "error", err)
		}
	}
	for id := range fresh {
		b.log.Info("certificate files changed: serving the new certificate", "listener", id)
	}
}

// watchFile checks a listener's certificate files for changes until the
// broker stops or a reload replaces them. Called with certMu held.
func (b *Broker) watchFile(id string, f *certs.FileSource) {
	ctx, cancel := context.WithCancel(b.ctx)
	b.watches[id] = cancel
	b.run.goNamed("certificate file watch", func() { f.Watch(ctx, certReloadEvery) })
}

// tlsConfig builds the listener's own TLS configuration: certificates
// through GetCertificate so renewals are served to new handshakes at once,
// TLS 1.2 minimum, AEAD suites, and client certificates when asked for.
func (b *Broker) tlsConfig(l *config.Listener) (*tls.Config, error) {
	get, err := b.certSource(l)
	if err != nil {
		return nil, err
	}
	c, err := listen.HardenedTLS(get, l.TLS.Version)
	if err != nil {
		return nil, fmt.Errorf("listener %s (%s): %w", l.ID, l.Pos, err)
	}
	if l.TLS.RequireCertificate {
		pool, err := loadCAs(l.TLS.CAFile, l.TLS.CAPath)
		if err != nil {
			return nil, fmt.Errorf("listener %s (%s): %w", l.ID, l.Pos, err)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

func loadCAs(file, dir string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	var paths []string
	if file != "" {
		paths = append(paths, file)
	}
	if dir != "" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("capath: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				paths = append(paths, dir+"/"+e.Name())
			}
		}
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("cafile: %w", err)
		}
		if !pool.AppendCertsFromPEM(data) && p == file {
			return nil, fmt.Errorf("cafile %s: no PEM certificates", p)
		}
	}
	return pool, nil
}

// startCertLoops watches certificate files, runs the ACME manager, and
// opens the ACME listeners once their certificate is ready.
func (b *Broker) startCertLoops() {
	if b.UsesTLS() {
		b.run.goNamed("certificate metrics", b.certMetricsLoop)
	}
	b.certMu.Lock()
	for id, f := range b.files {
		b.watchFile(id, f)
	}
	b.certMu.Unlock()
	if b.acme == nil {
		return
	}
	b.run.goNamed("acme", func() {
		if err := b.acme.Run(b.ctx); err != nil && b.ctx.Err() == nil {
			b.log.Error("acme stopped", "error", err)
		}
	})
	b.run.goNamed("acme listeners", b.openWhenReady)
}

func (b *Broker) openWhenReady() {
	select {
	case <-b.ctx.Done():
		return
	case <-b.acme.Ready():
	}
	b.mu.Lock()
	pending := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, l := range pending {
		if err := b.addListener(l); err != nil {
			b.log.Error("TLS listener could not open", "listener", l.ID, "error", err)
			continue
		}
		b.srv.Listeners.Serve(l.ID, b.srv.EstablishConnection)
		b.log.Info("certificate ready: TLS listener open", "listener", l.ID)
	}
	b.updateCertMetrics()
}

// certMetricsLoop publishes the served certificates' expiry and the last
// renewal error as metrics, now and every certReloadEvery.
func (b *Broker) certMetricsLoop() {
	t := time.NewTicker(certReloadEvery)
	defer t.Stop()
	for {
		b.updateCertMetrics()
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Broker) updateCertMetrics() {
	for _, l := range b.cfg.Listeners {
		if !l.TLS.Enabled() {
			continue
		}
		x, err := b.servedCertificate(l)
		if err != nil {
			continue
		}
		name := x.Subject.CommonName
		if len(x.DNSNames) > 0 {
			name = x.DNSNames[0]
		}
		b.met.CertExpiry(name, x.NotAfter)
	}
	if b.acme != nil {
		b.met.CertRenewalError(b.acme.Status().LastError != "")
	}
}

// ACME returns the certificate manager, nil without tls acme listeners.
func (b *Broker) ACME() *certs.Manager { return b.acme }

// servedCertificate is the leaf certificate the listener serves now.
func (b *Broker) servedCertificate(l *config.Listener) (*x509.Certificate, error) {
	get, err := b.certSource(l)
	if err != nil {
		return nil, err
	}
	c, err := get(&tls.ClientHelloInfo{})
	if err != nil {
		return nil, err
	}
	if c == nil || len(c.Certificate) == 0 {
		return nil, errors.New("no certificate")
	}
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	return x509.ParseCertificate(c.Certificate[0])
}
