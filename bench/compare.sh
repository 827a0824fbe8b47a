#!/usr/bin/env bash
# End-to-end benchmark: direct Redis (one shard), twemproxy, predixy and
# shardis on the same 3 redis-server shards, interleaved run by run; prints a
# markdown table (medians, shardis / best peer ratios), proxy CPU per million
# requests, and RSS with 10,000 idle clients. Results are also kept in
# bench/results/.
#
#   PREDIXY_SRC=~/src/predixy bench/compare.sh   # full run (about 15 minutes on 2 cores)
#   RUNS=1 N=20000 IDLE=0 bench/compare.sh       # quick smoke run, without predixy
#
# predixy is built from its public source (github.com/joyieldInc/predixy) in
# the directory PREDIXY_SRC names, with `make CXX="g++ -include ctime"` (its
# sources miss that include for today's g++); neither its source nor its binary
# belongs in this repository. Without PREDIXY_SRC (or PREDIXY, a binary) it is
# left out, with a message.
#
# Knobs (see bench/compare.py): RUNS, N, IDLE, ROWS="GET -P 1,MGET 10 keys",
# PREDIXY_THREADS, SKIP_BUILD=1 to use the existing target/release/shardis.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDIS_BENCH=1 scripts/install-deps.sh
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bin shardis
fi
if [ -z "${PREDIXY:-}" ] && [ -n "${PREDIXY_SRC:-}" ]; then
  if [ ! -x "$PREDIXY_SRC/src/predixy" ]; then
    make -C "$PREDIXY_SRC" CXX="g++ -include ctime" >&2
  fi
  export PREDIXY="$PREDIXY_SRC/src/predixy"
fi
if [ -z "${PREDIXY:-}" ]; then
  echo "compare.sh: predixy left out: set PREDIXY_SRC to a checkout of joyieldInc/predixy" >&2
fi
exec python3 bench/compare.py
