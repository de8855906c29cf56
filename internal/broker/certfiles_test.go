package broker_test

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/moat-mqtt/moat/internal/moattest"
)

// writeCertFiles writes a certificate for 127.0.0.1 and its key
// into dir as name.crt and name.key.
func writeCertFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	return moattest.WriteServerFiles(t, dir, name)
}

// tlsDial completes a TLS handshake without verifying the certificate.
func tlsDial(addr string) (*tls.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: waitLong}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
}
