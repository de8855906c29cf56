package admin

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// CertificateCheck is ready only while the certificate current returns is
// already valid and stays valid for more than minValid (e.g. 7 days): a
// renewal that keeps failing turns the broker unready well before clients
// start refusing the certificate.
func CertificateCheck(current func() (*x509.Certificate, error), minValid time.Duration) CheckFunc {
	return certificateCheck(current, minValid, time.Now)
}

func certificateCheck(current func() (*x509.Certificate, error), minValid time.Duration, now func() time.Time) CheckFunc {
	return func(context.Context) error {
		cert, err := current()
		if err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
		if cert == nil {
			return errors.New("certificate: none loaded yet")
		}
		t := now()
		name := cert.Subject.CommonName
		if len(cert.DNSNames) > 0 {
			name = cert.DNSNames[0]
		}
		switch left := cert.NotAfter.Sub(t); {
		case t.Before(cert.NotBefore):
			return fmt.Errorf("certificate for %s not valid before %s", name, cert.NotBefore.UTC().Format(time.RFC3339))
		case left <= 0:
			return fmt.Errorf("certificate for %s expired at %s", name, cert.NotAfter.UTC().Format(time.RFC3339))
		case left <= minValid:
			return fmt.Errorf("certificate for %s expires at %s, within %s", name, cert.NotAfter.UTC().Format(time.RFC3339), minValid)
		}
		return nil
	}
}
