package broker_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moat-mqtt/moat/internal/certs/acmetest"
	"github.com/moat-mqtt/moat/internal/moattest"
	"github.com/moat-mqtt/moat/internal/moattest/brokertest"
)

// A stop while a certificate order waits for DNS propagation (lego gives
// it minutes and cannot be cancelled) ends within the grace period and
// names what it left running.
func TestCloseBoundedDuringIssuance(t *testing.T) {
	acmetest.SetEnv(t)
	cf := acmetest.NewCloudflare(t)
	cf.SetHideTXT(true) // the challenge record never shows: issuance hangs
	ca := acmetest.NewCA(t, cf.DNSAddr)
	dir := t.TempDir()
	conf := fmt.Sprintf("listener 0 127.0.0.1\nlistener 0 127.0.0.1\ntls acme\nallow_anonymous true\nadmin_listener off\n"+
		"acme_domain mqtt.%s\nacme_directory %s\nacme_profile %s\nacme_dns_resolvers %s\nacme_dns_propagation_check true\nacme_state_dir %s\n",
		acmetest.Zone, ca.DirURL, acmetest.Profile, cf.DNSAddr, filepath.Join(dir, "acme"))
	env := map[string]string{"CLOUDFLARE_DNS_API_TOKEN": acmetest.Token, "CLOUDFLARE_BASE_URL": cf.BaseURL, "LEGO_CA_CERTIFICATES": ca.RootsFile}
	r := brokertest.RunBroker(t, conf, brokertest.Options{Dir: dir, Env: func(k string) string { return env[k] }})
	b := r.Broker
	// Let the order reach the propagation wait.
	moattest.Eventually(t, 20*time.Second, "a certificate order", func() bool { return ca.Orders() > 0 })
	time.Sleep(500 * time.Millisecond)

	grace := 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	start := time.Now()
	err := b.Close(ctx)
	took := time.Since(start)
	t.Logf("Close during issuance returned after %v: %v", took.Round(time.Millisecond), err)
	if took > grace+5*time.Second {
		t.Fatalf("Close took %v with a grace period of %v", took, grace)
	}
	if err == nil || !strings.Contains(err.Error(), "acme") {
		t.Errorf("Close error %v, want one naming the acme loop still running", err)
	}
}
