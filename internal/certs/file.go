package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FileSource serves a certificate and key read from PEM files, for example
// ones an external certbot keeps renewed, and reloads them on change.
type FileSource struct {
	certFile, keyFile string
	log               *slog.Logger
	cur               atomic.Pointer[tls.Certificate]

	mu   sync.Mutex // serialises Reload
	seen [2]fileStamp
}

// fileStamp identifies a file version well enough to notice certbot's
// symlink flips and in-place rewrites.
type fileStamp struct {
	mod   time.Time
	size  int64
	inode uint64
	dev   uint64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.inode, s.dev = uint64(st.Ino), uint64(st.Dev)
	}
	return s, nil
}

// NewFileSource loads certFile and keyFile now. Errors name the files, never
// key material.
func NewFileSource(certFile, keyFile string, logger *slog.Logger) (*FileSource, error) {
	if logger == nil {
		logger = slog.Default()
	}
	f := &FileSource{certFile: certFile, keyFile: keyFile, log: logger}
	if err := f.Reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// GetCertificate returns the current certificate.
func (f *FileSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := f.cur.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("certs: no certificate loaded")
}

// Reload re-reads both files. On failure the certificate already loaded
// stays in service.
func (f *FileSource) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *FileSource) reloadLocked() error {
	cs, _ := stampOf(f.certFile)
	ks, _ := stampOf(f.keyFile)
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return fmt.Errorf("certfile: %w", pathOnly(err))
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return fmt.Errorf("keyfile: %w", pathOnly(err))
	}
	c, err := parsePair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("certfile %s / keyfile %s: %w", f.certFile, f.keyFile, err)
	}
	if time.Now().After(c.Leaf.NotAfter) {
		f.log.Warn("certificate file is expired", "certfile", f.certFile, "not_after", c.Leaf.NotAfter)
	}
	f.seen = [2]fileStamp{cs, ks}
	f.cur.Store(c)
	return nil
}

// Watch polls the files every interval until ctx is done and reloads them
// when either changes (mtime, size or inode). A broken or half-written pair is
// logged and retried on the next change or tick; the old certificate keeps
// being served.
func (f *FileSource) Watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cs, err1 := stampOf(f.certFile)
		ks, err2 := stampOf(f.keyFile)
		f.mu.Lock()
		changed := err1 == nil && err2 == nil && (cs != f.seen[0] || ks != f.seen[1])
		if !changed && !failing {
			f.mu.Unlock()
			continue
		}
		err := f.reloadLocked()
		f.mu.Unlock()
		switch {
		case err != nil && !failing:
			f.log.Error("certificate files changed but cannot be loaded; still serving the previous certificate", "err", err)
			failing = true
		case err == nil:
			failing = false
			if c := f.cur.Load(); c != nil {
				f.log.Info("certificate reloaded", "certfile", f.certFile, "serial", c.Leaf.SerialNumber.Text(16), "not_after", c.Leaf.NotAfter)
			}
		}
	}
}
