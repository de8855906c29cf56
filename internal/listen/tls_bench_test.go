package listen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// p256Cert is a self-signed ECDSA P-256 certificate for 127.0.0.1.
func p256Cert(tb testing.TB) tls.Certificate {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// BenchmarkTLSHandshake runs full TLS 1.3 handshakes (no resumption) over
// in-memory pipes, client and server in this process, with the server
// configuration Moat uses and with Go's default key-exchange groups, for a
// client offering the hybrid post-quantum group (Go, OpenSSL 3.5) and one
// offering only X25519 and P-256 (most device stacks).
func BenchmarkTLSHandshake(b *testing.B) {
	cert := p256Cert(b)
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }
	moat, err := HardenedTLS(get, "")
	if err != nil {
		b.Fatal(err)
	}
	goDefault := moat.Clone()
	goDefault.CurvePreferences = nil
	for _, srv := range []struct {
		name string
		cfg  *tls.Config
	}{{"server=moat", moat}, {"server=go-default", goDefault}} {
		for _, cl := range []struct {
			name   string
			curves []tls.CurveID
		}{{"client=pq-hybrid", nil}, {"client=x25519-p256", []tls.CurveID{tls.X25519, tls.CurveP256}}} {
			b.Run(srv.name+"/"+cl.name, func(b *testing.B) {
				ccfg := &tls.Config{InsecureSkipVerify: true, CurvePreferences: cl.curves, ClientSessionCache: nil}
				var group tls.CurveID
				for b.Loop() {
					a, c := net.Pipe()
					s := tls.Server(a, srv.cfg)
					done := make(chan error, 1)
					go func() { done <- s.Handshake() }()
					cc := tls.Client(c, ccfg)
					if err := cc.Handshake(); err != nil {
						b.Fatal(err)
					}
					if err := <-done; err != nil {
						b.Fatal(err)
					}
					group = s.ConnectionState().CurveID
					a.Close()
					c.Close()
				}
				b.ReportMetric(float64(group), "group")
			})
		}
	}
}
