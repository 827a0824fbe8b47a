#!/usr/bin/env bash
# Quick start: installs Redis if missing, starts three shards on 7001-7003
# (as in proxy.toml), builds shardis and runs it on 127.0.0.1:6380.
# Ctrl-C stops the proxy and the shards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
dir=$(mktemp -d -t shardis-shards.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
for port in 7001 7002 7003; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" &
  pids+=($!)
done
cargo build --release
echo "shardis on 127.0.0.1:6380 in front of 127.0.0.1:7001-7003 (Ctrl-C to stop)"
target/release/shardis --config proxy.toml &
pids+=($!)
wait "${pids[-1]}"
