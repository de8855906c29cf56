package listen

import (
	"crypto/tls"
	"net"
	"testing"
)

// The key exchange is X25519 or P-256 whatever the client offers first,
// hybrid post-quantum groups included; clients with only P-384 still
// connect, and one with none of these is refused.
func TestKeyExchangeGroups(t *testing.T) {
	cert := p256Cert(t)
	cfg, err := HardenedTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		client []tls.CurveID
		max    uint16
		want   tls.CurveID // 0: refused
	}{
		{"go default (hybrid first)", nil, 0, tls.X25519},
		{"hybrid only", []tls.CurveID{tls.X25519MLKEM768}, 0, 0},
		{"p256 only", []tls.CurveID{tls.CurveP256}, 0, tls.CurveP256},
		{"p384 only", []tls.CurveID{tls.CurveP384}, 0, tls.CurveP384},
		{"p521 only", []tls.CurveID{tls.CurveP521}, 0, 0},
		{"tls 1.2 default", nil, tls.VersionTLS12, tls.X25519},
		{"tls 1.2 p256", []tls.CurveID{tls.CurveP256}, tls.VersionTLS12, tls.CurveP256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, c := net.Pipe()
			defer a.Close()
			defer c.Close()
			s := tls.Server(a, cfg)
			done := make(chan error, 1)
			go func() { done <- s.Handshake(); a.Close() }()
			cc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, CurvePreferences: tc.client, MaxVersion: tc.max})
			cerr := cc.Handshake()
			serr := <-done
			if tc.want == 0 {
				if serr == nil || cerr == nil {
					t.Fatalf("handshake succeeded with %v", s.ConnectionState().CurveID)
				}
				return
			}
			if serr != nil || cerr != nil {
				t.Fatalf("handshake: server %v, client %v", serr, cerr)
			}
			if got := s.ConnectionState().CurveID; got != tc.want {
				t.Fatalf("group %v, want %v", got, tc.want)
			}
		})
	}
}
