#!/usr/bin/env bash
# One Moat node against two Moat nodes joined by a three-node NATS
# JetStream cluster, all on 127.0.0.1 in one test process: publish->delivery
# p50/p99 (QoS 0 and 1, one message at a time), deliveries per CPU-second
# (fan-out to ten subscribers), heap per connection. Prints figures only;
# run by hand, never part of make test.
#
#   scripts/bench-cluster.sh          full run
#   QUICK=1 scripts/bench-cluster.sh  short run
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
MOAT_BENCH_CLUSTER=1 go test -count=1 -timeout 30m -run '^TestBenchCluster$' -v ./internal/broker/ |
	grep -E '^(bench-cluster|one node|two nodes)|FAIL|^ok'
