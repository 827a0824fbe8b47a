#!/usr/bin/env bash
# Lock acquisition latency: `SET lock:<random> token NX PX 10000` through
# shardis (Redlock over a 3-member group) against the same command sent
# straight to one Redis, with redis-benchmark's latency summary (p50/p99).
# Every request takes a fresh lock name, so every one is a real acquisition.
#
# Usage: bench/lock_latency.sh [REQUESTS] [CLIENTS]   (defaults 20000, 10)
n=${1:-20000}
clients=${2:-10}
source "$(dirname "$0")/lib.sh"
start_shards 3
proxy=$(free_port)
shardis_config "$proxy" 3 >"$dir/proxy.toml"
RUST_LOG=warn target/release/shardis --config "$dir/proxy.toml" &
pids+=($!)
wait_ports "${ports[@]}" "$proxy"
run() { # PORT LABEL
  redis-benchmark -p "$1" -n "$n" -c "$clients" -r 100000000 \
    SET 'lock:__rand_int__' token NX PX 10000 2>/dev/null | tr '\r' '\n' |
    awk -v label="$2" '/throughput summary/ { rps=$3 }
      /latency summary/ { getline; getline; print label, "ops/s=" rps, "avg=" $1, "p50=" $3, "p95=" $4, "p99=" $5, "max=" $6 }'
}
echo "# SET lock:<random> token NX PX 10000, $n requests, $clients clients (latencies in ms)"
for round in 1 2 3; do
  run "${ports[0]}" "direct-redis   "
  run "$proxy"      "shardis-redlock"
done
