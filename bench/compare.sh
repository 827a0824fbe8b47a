#!/usr/bin/env bash
# End-to-end benchmark: direct Redis (one shard), twemproxy and shardis on the
# same 3 redis-server shards, interleaved run by run; prints a markdown table
# (medians, shardis/twemproxy ratios), proxy CPU per million requests, and RSS
# with 10,000 idle clients. Results are also kept in bench/results/.
#
#   bench/compare.sh                      # full run (about 10 minutes on 2 cores)
#   RUNS=1 N=20000 IDLE=0 bench/compare.sh  # quick smoke run
#
# Knobs (see bench/compare.py): RUNS, N, IDLE, ROWS="GET -P 1,MGET 10 keys",
# SKIP_BUILD=1 to use the existing target/release/shardis.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDIS_BENCH=1 scripts/install-deps.sh
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin shardis
fi
exec python3 bench/compare.py
