package deploy

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/containertest"
)

// acmeHarness is the certificate tests' Pebble + fake Cloudflare + DNS,
// run in a container of its own on a stack's network: the host's loopback
// is out of the stack's reach.
type acmeHarness struct {
	ip      string
	out     string // its root.pem and acme-server.pem
	pool    *x509.CertPool
	rootPEM []byte
}

const (
	acmePort = "14000"
	apiPort  = "14080"
	dnsPort  = "5353"
)

func startACMEHarness(t *testing.T, p *containertest.Podman, network string) *acmeHarness {
	t.Helper()
	bin := buildTool(t, "./internal/certs/acmetest/cmd/acmetest")
	out := t.TempDir()
	if err := os.Chmod(out, 0o755); err != nil { // Moat's uid reads it
		t.Fatal(err)
	}
	name := "moat-acmetest-" + p.RunID
	p.Cleanup("container", name)
	p.Must(time.Minute, "run", "-d", "--name", name, "--network", network+":alias=acmetest",
		"--volume", bin+":/usr/local/bin/acmetest:ro", "--volume", out+":/out",
		containertest.DebianImage, "/usr/local/bin/acmetest",
		"-acme", ":"+acmePort, "-api", ":"+apiPort, "-dns", ":"+dnsPort, "-out", "/out")
	waitFor(t, 30*time.Second, "ACME harness ready", func() string {
		if _, err := os.Stat(filepath.Join(out, "ready")); err != nil {
			return "not ready; logs: " + lastLines(p.Logs(name), 5)
		}
		return ""
	})
	h := &acmeHarness{ip: p.IP(name, network), out: out}
	var err error
	if h.rootPEM, err = os.ReadFile(filepath.Join(out, "root.pem")); err != nil {
		t.Fatal(err)
	}
	h.pool = x509.NewCertPool()
	if !h.pool.AppendCertsFromPEM(h.rootPEM) {
		t.Fatal("root.pem holds no certificate")
	}
	return h
}

// conf is what a moat.conf copy adds to use the harness.
func (h *acmeHarness) conf() []string {
	return []string{
		"acme_directory https://" + h.ip + ":" + acmePort + "/dir",
		"acme_profile " + acmetest.Profile,
		"acme_dns_resolvers " + h.ip + ":" + dnsPort,
		"acme_dns_propagation_check false",
	}
}

// env is what the Moat container needs in its environment to trust the
// harness and reach its Cloudflare API; volume mounts its certificates.
func (h *acmeHarness) env() map[string]string {
	return map[string]string{
		"CLOUDFLARE_BASE_URL":  "http://" + h.ip + ":" + apiPort + "/client/v4",
		"LEGO_CA_CERTIFICATES": "/run/acmetest/acme-server.pem",
		// The harness's HTTPS certificate names 127.0.0.1, not its
		// address on the stack's network.
		"LEGO_CA_SERVER_NAME": "127.0.0.1",
	}
}

func (h *acmeHarness) volume() string { return h.out + ":/run/acmetest:ro" }

func (h *acmeHarness) tlsConfig(name string) *tls.Config {
	return &tls.Config{RootCAs: h.pool, ServerName: name, MinVersion: tls.VersionTLS12}
}
