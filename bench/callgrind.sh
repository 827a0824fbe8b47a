#!/usr/bin/env bash
# Instructions per request through shardis, counted by callgrind: 3 shards,
# shardis (threads = 1) under `valgrind --tool=callgrind`, one fixed
# redis-benchmark load, then the total divided by the requests and the top
# functions (self and inclusive). Instruction counts do not depend on what
# else the machine runs, so this is how a hot-path change is compared on a
# noisy machine: run it on the build before and after.
#
#   bench/callgrind.sh                 # GET -P 16, 200000 requests
#   TEST=set P=1 N=50000 bench/callgrind.sh
#   C=1000 P=1 N=50000 bench/callgrind.sh  # 1000 clients (default 50)
#   D=1024 TEST=get P=1 bench/callgrind.sh   # 1 KiB values (default 3 bytes)
#   SHARDIS=/path/to/other/shardis bench/callgrind.sh   # a build to compare
#   CG_OUT=/tmp/x.cg bench/callgrind.sh                 # keep the profile
#   TLS=1 bench/callgrind.sh            # the measured load over TLS ([tls] listen)
#
# Under valgrind every request takes tens of milliseconds of wall time, so
# the slow log (a wall-clock threshold) would log all of them: it is set to
# 10 s here unless SHARDIS_CONFIG says otherwise, so the count is what a
# request costs when it is not slow.
#
# The proxy's start (ring building) and the warm-up SETs are left out of the
# count: instrumentation is switched on only around the measured load
# (callgrind_control -i).
source "$(dirname "$0")/lib.sh"
test=${TEST:-get}
pipeline=${P:-16}
n=${N:-200000}
clients=${C:-50}
size=${D:-3}
bin=${SHARDIS:-target/release/shardis}
start_shards 3
proxy=$(free_port)
# TLS=1: the measured load goes to a TLS listener (tls.listen) of the proxy.
load=(-p "$proxy")
tls_section=""
if [ "${TLS:-0}" = 1 ]; then
  make_certs
  tls_port=$(free_port)
  load=(--tls --cacert "$dir/ca.pem" -p "$tls_port")
  tls_section=$(printf '[tls]\ncert = "%s"\nkey = "%s"\nlisten = "127.0.0.1:%s"' "$dir/server.pem" "$dir/server.key" "$tls_port")
fi
# `threads` must come before the tables.
# SHARDIS_CONFIG: more top-level settings, e.g. "slowlog_log_slower_than_us = -1".
{
  echo "threads = 1"
  printf '%b\n' "${SHARDIS_CONFIG:-slowlog_log_slower_than_us = 10000000}"
  shardis_config "$proxy" 3
  echo "$tls_section"
} >"$dir/p.toml"
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/cg.out" \
  "$bin" --config "$dir/p.toml" 2>"$dir/valgrind.log" &
vg=$!
pids+=($vg)
wait_ports "${ports[@]}"
for _ in $(seq 200); do redis-cli -p "$proxy" ping >/dev/null 2>&1 && break; sleep 0.1; done
if ! redis-cli -p "$proxy" ping >/dev/null 2>&1; then
  echo "callgrind.sh: the proxy did not start:" >&2
  tail -5 "$dir/valgrind.log" >&2
  exit 1
fi
# Warm the keyspace so GETs find values, outside the counted window.
redis-benchmark -p "$proxy" -c 50 -P 16 -n 100000 -r 100000 -d "$size" -t set -q >/dev/null
callgrind_control -i on "$vg" >/dev/null 2>&1
redis-benchmark "${load[@]}" -c "$clients" -P "$pipeline" -n "$n" -r 100000 -d "$size" -t "$test" -q >/dev/null
callgrind_control -i off "$vg" >/dev/null 2>&1
kill -INT "$vg"
wait "$vg" 2>/dev/null || true
[ -n "${CG_OUT:-}" ] && cp "$dir/cg.out" "$CG_OUT"
total=$(callgrind_annotate "$dir/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$test -P $pipeline -c $clients -d $size, $n requests$([ "${TLS:-0}" = 1 ] && echo ", TLS"): $total instructions, $((total / n)) per request ($bin)"
echo "--- top functions, self"
callgrind_annotate "$dir/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n 2,16p | cut -c1-160
echo "--- top functions, inclusive"
callgrind_annotate --inclusive=yes "$dir/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | grep shardis:: | sed -n 1,16p | cut -c1-160
