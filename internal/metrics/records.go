package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

const recordsHelp = "Per-client records held, by kind: clients (mochi's sessions, connected and persistent), identities (auth), approved (CONNECTs being authenticated), sessions (listener connections), counted (connections under the listener limits), networks (per-IP limiter entries)."

// recordsDesc describes moat_client_records.
var recordsDesc = prometheus.NewDesc(namespace+"_client_records", recordsHelp, []string{"kind"}, nil)

// records is a collector asking for the counts at each scrape.
type records struct{ counts func() map[string]int }

func (r records) Describe(ch chan<- *prometheus.Desc) { ch <- recordsDesc }

func (r records) Collect(ch chan<- prometheus.Metric) {
	for kind, n := range r.counts() {
		ch <- prometheus.MustNewConstMetric(recordsDesc, prometheus.GaugeValue, float64(n), kind)
	}
}

// RegisterRecords exposes counts (kind -> records held) as
// moat_client_records; counts runs at each scrape. kinds must be a fixed
// set chosen by the caller.
func RegisterRecords(reg prometheus.Registerer, counts func() map[string]int) error {
	return reg.Register(records{counts: counts})
}
