// Command benchcore runs Moat and mosquitto side by side on 127.0.0.1 with
// the same password file, ACL and certificate, and prints medians of
// interleaved repetitions. It is run by hand through scripts/bench-core.sh.
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type options struct {
	moatBin, mosqBin, dir string
	beforeBin             string
	reps                  int
	dur                   time.Duration
	pairs, fanout, idle   int
	connWorkers           int
	stormN                int
	stormLimit            time.Duration
	latRate               float64
	iterations            int
	only                  string
	churnRounds, churnN   int
	subsN, subsFilters    int
	memoryLimit           int64
}

// metric is one table row.
type metric struct {
	key, label, unit string
	higherBetter     bool
}

var rows = []metric{
	{"fanin.per_cpu", "QoS0 fan-in deliveries per broker CPU-s", "msg/cpu-s", true},
	{"fanin.rate", "QoS0 fan-in delivered rate (max)", "msg/s", true},
	{"fanin.loss", "QoS0 fan-in loss at full speed", "%", false},
	{"fanin.gcores", "  generator CPU during fan-in", "cores", false},
	{"paced.loss", "QoS0 fan-in loss at mosquitto's max rate", "%", false},
	{"paced.per_cpu", "QoS0 fan-in at that rate, per broker CPU-s", "msg/cpu-s", true},
	{"lat.p50", "QoS1 publish->delivery p50", "ms", false},
	{"lat.p99", "QoS1 publish->delivery p99", "ms", false},
	{"rss.mib_per_1k", "RSS per 1k idle authenticated connections", "MiB", false},
	{"rss.base_mib", "  RSS of the fresh broker", "MiB", false},
	{"churn.first_mib_per_1k", "churn: RSS per 1k connections, round 1", "MiB", false},
	{"churn.last_mib_per_1k", "churn: RSS per 1k connections, last round", "MiB", false},
	{"churn.last_over_first", "churn: last round / round 1", "x", false},
	{"churn.last_over_prev", "churn: last round / the round before", "x", false},
	{"churn.closed_mib", "churn: RSS after the last close-all", "MiB", false},
	{"subs.mib_per_1k", "RSS per 1k connections with 10 subscriptions each", "MiB", false},
	{"conn.per_cpu", "TCP connect+CONNACK+DISCONNECT per broker CPU-s", "conn/cpu-s", true},
	{"conn.per_s", "TCP connects per second", "conn/s", true},
	{"conn.gcores", "  generator CPU during connects", "cores", false},
	{"tls.per_cpu", "TLS full handshakes (P-256) per broker CPU-s", "hs/cpu-s", true},
	{"tls.per_s", "TLS full handshakes per second", "hs/s", true},
	{"tls.gcores", "  generator CPU during handshakes", "cores", false},
	{"fanout.per_cpu", "QoS0 fan-out deliveries per broker CPU-s", "msg/cpu-s", true},
	{"fanout.loss", "QoS0 fan-out loss at full speed", "%", false},
	{"fanout.gcores", "  generator CPU during fan-out", "cores", false},
	{"storm.warm_s", "reconnect storm: Moat's first (uncached) connect", "s", false},
	{"storm.seconds", "reconnect storm: all connected after", "s", false},
	{"storm.cpu_s", "reconnect storm: broker CPU", "cpu-s", false},
	{"storm.connected", "reconnect storm: clients connected", "clients", true},
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-serve-mochi" {
		if err := serveMochi(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "benchcore:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	quick := flag.Bool("quick", false, "short run: 1 repetition, small counts")
	flag.StringVar(&o.moatBin, "moat", "bin/moat", "moat binary")
	flag.StringVar(&o.mosqBin, "mosquitto", "/usr/sbin/mosquitto", "mosquitto binary")
	flag.StringVar(&o.beforeBin, "moat-before", "", "a second Moat binary (an older build) measured beside the others")
	flag.StringVar(&o.dir, "dir", "", "work directory (default: a new temporary directory, removed at the end)")
	flag.IntVar(&o.reps, "reps", 3, "repetitions per broker, interleaved")
	flag.DurationVar(&o.dur, "dur", 3*time.Second, "length of each throughput and latency run")
	flag.IntVar(&o.pairs, "pairs", 8, "fan-in publisher/subscriber pairs (one user each)")
	flag.IntVar(&o.fanout, "fanout", 50, "fan-out subscribers")
	flag.IntVar(&o.idle, "idle", 2000, "idle connections for the RSS measurement")
	flag.IntVar(&o.connWorkers, "conn-workers", 8, "concurrent clients for the connect and TLS rates")
	flag.IntVar(&o.stormN, "storm", 1000, "reconnect storm clients (0: skip)")
	flag.DurationVar(&o.stormLimit, "storm-limit", 150*time.Second, "per-client deadline in the storm")
	flag.Float64Var(&o.latRate, "lat-rate", 1000, "QoS 1 publishes per second for the latency run")
	flag.IntVar(&o.iterations, "iterations", 210000, "PBKDF2 iterations of the full-cost password entries")
	flag.StringVar(&o.only, "only", "", "comma-separated scenarios: fanin,lat,rss,churn,subs,conn,tls,fanout,storm")
	flag.IntVar(&o.churnRounds, "churn-rounds", 8, "rounds of connect-all / close-all")
	flag.IntVar(&o.churnN, "churn", 3000, "connections per churn round")
	flag.IntVar(&o.subsN, "subs", 3000, "connections for the subscriptions RSS")
	flag.IntVar(&o.subsFilters, "subs-filters", 10, "subscriptions per connection")
	flag.Int64Var(&o.memoryLimit, "memory-limit", 0, "memory_limit of every broker in bytes (GOMEMLIMIT at 90% for plain mochi); 0 = none")
	flag.Parse()
	if *quick { // quick defaults; flags given explicitly win
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"reps": "1", "dur": "2s", "idle": "500", "storm": "100", "fanout": "20",
			"churn": "1000", "churn-rounds": "4", "subs": "1000"} {
			if !set[name] {
				_ = flag.Set(name, v)
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "benchcore:", err)
		os.Exit(1)
	}
}

func raiseNoFile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = min(l.Max, 65536)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func run(ctx context.Context, o options) error {
	raiseNoFile()
	if o.dir == "" {
		d, err := os.MkdirTemp("", "benchcore-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	moatBin, err := filepath.Abs(o.moatBin)
	if err != nil {
		return err
	}
	s := &setup{
		dir: o.dir, passwdPath: filepath.Join(o.dir, "passwd"), aclPath: filepath.Join(o.dir, "aclfile"),
		certPath: filepath.Join(o.dir, "cert.pem"), keyPath: filepath.Join(o.dir, "key.pem"),
		lat: user{"lat", "lat-pw"}, fan: user{"fan", "fan-pw"}, cheap: user{"cheap", "cheap-pw"},
		iterations: o.iterations, memoryLimit: o.memoryLimit,
	}
	for i := range o.pairs {
		s.fanin = append(s.fanin, user{fmt.Sprintf("fi%d", i), fmt.Sprintf("fi%d-pw", i)})
	}
	for i := range o.stormN {
		s.storm = append(s.storm, user{fmt.Sprintf("st%d", i), "storm-pw"})
	}
	fmt.Printf("setup: %d x %d-iteration $7$ entries written with moat passwd (storm users share one hash string), 1 cheap 1-iteration entry; %s\n",
		3+o.pairs, o.iterations, o.dir)
	if err := s.writePasswd(ctx, moatBin, o.stormN); err != nil {
		return err
	}
	if err := s.writeCerts(); err != nil {
		return err
	}
	beforeBin := ""
	if o.beforeBin != "" {
		if beforeBin, err = filepath.Abs(o.beforeBin); err != nil {
			return err
		}
	}
	if err := s.writeConfigs(moatBin, o.mosqBin, beforeBin); err != nil {
		return err
	}
	brokers := []*broker{s.moat, s.mochi, s.mosqui}
	if s.before != nil {
		brokers = append(brokers, s.before)
	}
	for _, b := range brokers {
		if err := b.start(); err != nil {
			return err
		}
		defer b.stop()
	}
	go func() { // a Ctrl-C still stops both brokers
		<-ctx.Done()
		for _, b := range brokers {
			if b.cmd != nil {
				_ = b.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
	}()
	for _, b := range brokers {
		fmt.Printf("%s pid %d on %s (TLS %s)\n", b.name, b.pid(), b.addr, b.tlsAddr)
	}
	if o.memoryLimit > 0 {
		fmt.Printf("memory_limit %d bytes on every broker\n", o.memoryLimit)
	}
	fmt.Printf("reps %d, run length %s, fan-in pairs %d, fan-out %d, idle %d, storm %d\n\n",
		o.reps, o.dur, o.pairs, o.fanout, o.idle, o.stormN)

	want := func(name string) bool {
		return o.only == "" || slices.Contains(strings.Split(o.only, ","), name)
	}
	raw := map[string]map[string][]float64{} // key -> broker -> per-rep values
	record := func(prefix, bname string, r result) {
		for k, v := range r {
			key := prefix + "." + k
			if raw[key] == nil {
				raw[key] = map[string][]float64{}
			}
			raw[key][bname] = append(raw[key][bname], v)
		}
	}
	// interleave runs fn on each broker per repetition, alternating which
	// goes first so neither always runs on the warmer machine.
	interleave := func(prefix string, reps int, fn func(b *broker, rep int) (result, error)) error {
		for rep := range reps {
			order := append(slices.Clone(brokers[rep%len(brokers):]), brokers[:rep%len(brokers)]...)
			for _, b := range order {
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := fn(b, rep)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", prefix, b.name, err)
				}
				record(prefix, b.name, r)
				fmt.Printf("  %-7s rep %d %-9s %s\n", prefix, rep+1, b.name, format(r))
			}
		}
		return nil
	}

	if want("rss") {
		if err := interleave("rss", o.reps, func(b *broker, _ int) (result, error) { return idleRSS(s, b, o.idle) }); err != nil {
			return err
		}
	}
	if want("churn") {
		if err := interleave("churn", o.reps, func(b *broker, _ int) (result, error) {
			return churn(s, b, o.churnRounds, o.churnN)
		}); err != nil {
			return err
		}
	}
	if want("subs") {
		if err := interleave("subs", o.reps, func(b *broker, _ int) (result, error) {
			return subsRSS(s, b, o.subsN, o.subsFilters)
		}); err != nil {
			return err
		}
	}
	if want("fanin") {
		if err := interleave("fanin", o.reps, func(b *broker, rep int) (result, error) {
			return fanIn(s, b, o.dur, 0, fmt.Sprint(rep))
		}); err != nil {
			return err
		}
		rate := median(raw["fanin.rate"]["mosquitto"])
		fmt.Printf("  pacing fan-in at mosquitto's median max rate %.0f msg/s\n", rate)
		if err := interleave("paced", o.reps, func(b *broker, rep int) (result, error) {
			return fanIn(s, b, o.dur, rate, fmt.Sprintf("p%d", rep))
		}); err != nil {
			return err
		}
	}
	if want("lat") {
		if err := interleave("lat", o.reps, func(b *broker, _ int) (result, error) { return latency(s, b, o.latRate, o.dur) }); err != nil {
			return err
		}
	}
	if want("conn") {
		if err := interleave("conn", o.reps, func(b *broker, _ int) (result, error) {
			return connects(s, b, o.connWorkers, o.dur, false)
		}); err != nil {
			return err
		}
	}
	if want("tls") {
		if err := interleave("tls", o.reps, func(b *broker, _ int) (result, error) {
			return connects(s, b, o.connWorkers, o.dur, true)
		}); err != nil {
			return err
		}
	}
	if want("fanout") {
		if err := interleave("fanout", o.reps, func(b *broker, _ int) (result, error) { return fanOut(s, b, o.fanout, o.dur) }); err != nil {
			return err
		}
	}
	if want("storm") && o.stormN > 0 {
		// One repetition: at 210000 iterations mosquitto spends about a
		// minute of CPU per thousand clients. mosquitto caches nothing, so
		// its warm-up connect is skipped.
		if err := interleave("storm", 1, func(b *broker, _ int) (result, error) {
			return storm(s, b, b == s.moat, o.stormLimit)
		}); err != nil {
			return err
		}
	}
	printTable(raw)
	return nil
}

func format(r result) string {
	keys := make([]string, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, num(r[k]))
	}
	return b.String()
}

func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "-"
	case a == 0:
		return "0"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(raw map[string]map[string][]float64) {
	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.Debug)
	fmt.Fprintln(w, "metric (median)\tunit\tmoat\tmochi\tmosquitto\tmoat/mosquitto\tmoat-before\tbetter\t")
	for _, m := range rows {
		vals, ok := raw[m.key]
		if !ok {
			continue
		}
		a, c, b := median(vals["moat"]), median(vals["mochi"]), median(vals["mosquitto"])
		ratio := "-"
		if b != 0 && !math.IsNaN(a) && !math.IsNaN(b) {
			ratio = fmt.Sprintf("%.2f", a/b)
		}
		better := "lower"
		if m.higherBetter {
			better = "higher"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", m.label, m.unit, num(a), num(c), num(b), ratio, num(median(vals["moat-before"])), better)
	}
	w.Flush()
	fmt.Println("\nraw values per repetition (moat | mochi | mosquitto | moat-before):")
	for _, m := range rows {
		vals, ok := raw[m.key]
		if !ok {
			continue
		}
		fmt.Printf("  %-22s %s | %s | %s | %s\n", m.key, list(vals["moat"]), list(vals["mochi"]), list(vals["mosquitto"]), list(vals["moat-before"]))
	}
}

func list(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = num(x)
	}
	return "[" + strings.Join(s, " ") + "]"
}
