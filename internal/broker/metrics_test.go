package broker_test

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func metricFamilies(t *testing.T, tb *testBroker) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := tb.b.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// The parts report to /metrics: store commits, connections, auth failures.
func TestBrokerFeedsMetrics(t *testing.T) {
	tb := startBroker(t, setup{acl: tableBACL, conf: "persistence true\npersistence_location store\npersistence_encryption off\n"})
	c := connect(t, tb.addr, as(4, "alice", "m1"))
	if a := c.publish("alice/r", "v", 1, true); a.code != 0 {
		t.Fatalf("retained publish: 0x%02x", a.code)
	}
	bad, _ := dial(t, tb.addr, opts{v: 4, id: "m2", user: "alice", hasUser: true, pass: "wrong", hasPass: true, keepalive: 30})
	bad.drop()
	mf := metricFamilies(t, tb)
	if h := mf["moat_store_commit_seconds"]; h == nil || h.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
		t.Fatalf("no store commit recorded: %v", h)
	}
	if g := mf["moat_connections"]; g == nil || g.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Fatalf("connections: %v", g)
	}
	if f := mf["moat_auth_failures_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Fatalf("auth failures: %v", f)
	}
}
