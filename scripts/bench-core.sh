#!/usr/bin/env bash
# Moat, plain mochi and mosquitto side by side on this machine, on 127.0.0.1
# only: the same passwd, aclfile and certificate (plain mochi allows every
# client); interleaved repetitions; medians.
# Run by hand (make bench); it is never part of make test.
#
#   scripts/bench-core.sh                 full run (about 5-6 minutes)
#   QUICK=1 scripts/bench-core.sh         one short repetition
#   REPS=5 scripts/bench-core.sh -only fanin,lat    any benchcore flag after
#   MEMORY_LIMIT=268435456 scripts/bench-core.sh -only rss,churn,subs,conn,tls
#                                         the same with memory_limit on each
#
# Memory scenarios: rss (idle connections, fresh), churn (-churn-rounds x
# -churn connect-all / close-all, RSS per round), subs (connections with
# -subs-filters subscriptions each).
#
# Environment: MOSQUITTO (default: mosquitto on PATH, then /usr/sbin/mosquitto),
# QUICK, REPS, MEMORY_LIMIT, MOAT_BEFORE (an older moat binary measured
# beside the others).
set -euo pipefail
cd "$(dirname "$0")/.."

# Both brokers and the generator inherit this: thousands of sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

mosq=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
if [ ! -x "$mosq" ]; then
	echo "bench-core: mosquitto not found; apt-get install mosquitto" >&2
	exit 1
fi
[ -x bin/moat ] || make build

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/benchcore" ./scripts/benchcore

args=(-moat bin/moat -mosquitto "$mosq" -dir "$tmp/run")
mkdir "$tmp/run"
if [ -n "${QUICK:-}" ]; then args+=(-quick); fi
if [ -n "${REPS:-}" ]; then args+=(-reps "$REPS"); fi
if [ -n "${MOAT_BEFORE:-}" ]; then args+=(-moat-before "$MOAT_BEFORE"); fi
if [ -n "${MEMORY_LIMIT:-}" ]; then args+=(-memory-limit "$MEMORY_LIMIT"); fi

echo "moat: $(bin/moat version); $("$mosq" -h 2>&1 | head -1); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
"$tmp/benchcore" "${args[@]}" "$@"
