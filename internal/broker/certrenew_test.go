package broker_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/broker"
	"github.com/moat-mqtt/moat/internal/certs"
	"github.com/moat-mqtt/moat/internal/config"
)

// `moat cert renew` beside a running broker stores a new certificate; the
// running broker serves it after a reload (SIGHUP), not before.
func TestManualRenewServedAfterReload(t *testing.T) {
	a := startACMEBroker(t)
	addr := waitAddr(t, a.b, "mqtts:127.0.0.1:0", 60*time.Second).String()
	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", addr, a.tlsConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	first := serial()

	// What `moat cert renew -c FILE` does: its own manager on the same state.
	cfg, err := config.Load(a.conf, a.getenv)
	if err != nil {
		t.Fatal(err)
	}
	m, err := certs.NewManager(broker.ACMEOptions(cfg, a.getenv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	renewed := m.Status().Serial
	if got := serial(); got != first {
		t.Fatalf("the running broker changed certificate without a reload: %s", got)
	}
	if err := a.b.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got == first {
		t.Errorf("after the reload still serving %s, not the renewed %s", first, renewed)
	}
}
