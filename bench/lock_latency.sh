#!/usr/bin/env bash
# Lock acquisition latency: `SET lock:<random> token NX PX 10000` through
# shardis (Redlock over a 3-member group) against the same command sent
# straight to one Redis, with redis-benchmark's latency summary (p50/p99).
# Every request takes a fresh lock name, so every one is a real acquisition.
#
# Usage: bench/lock_latency.sh [REQUESTS] [CLIENTS]   (defaults 20000, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
clients=${2:-10}
scripts/install-deps.sh >/dev/null
cargo build --release --bin shardis >&2
dir=$(mktemp -d -t shardis-locklat.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ports=()
for i in 0 1 2; do
  p=$(free_port); ports+=("$p")
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --logfile "$dir/r$i.log" &
  pids+=($!)
done
proxy=$(free_port)
{
  echo "listen = \"127.0.0.1:$proxy\""
  for i in 0 1 2; do printf '[[backends]]\nname = "shard-%s"\naddr = "127.0.0.1:%s"\n' "$i" "${ports[$i]}"; done
} >"$dir/proxy.toml"
RUST_LOG=warn target/release/shardis --config "$dir/proxy.toml" &
pids+=($!)
for p in "${ports[@]}" "$proxy"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
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
