#!/usr/bin/env bash
# Resharding a fleet under load: etcd, 3 shards holding KEYS keys, PROXIES
# proxies in [cluster] mode; GETs run through the first proxy while
# `shardis ctl apply` adds a fourth shard. Prints what the operator sees
# (ctl apply's output: time to commit, to serve, to finish), keys moved per
# second, how long each proxy held the moving keys (prepare -> new epoch in
# service, from the proxies' logs), GET throughput and p99 before and during
# the change, error replies, and checks that no key was lost or duplicated.
#
# Usage: bench/fleet.sh [KEYS] [PROXIES]   (default 200000 2)
keys=${1:-200000}
nproxies=${2:-2}
source "$(dirname "$0")/lib.sh"
start_shards 4
etcd_port=$(free_port)
etcd_peer=$(free_port)
etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "default=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q true && break; sleep 0.1; done
backends() { # N
  local i
  for i in $(seq 0 $(($1 - 1))); do printf '[[backends]]\nname = "shard-%s"\naddr = "127.0.0.1:%s"\n' "$i" "${ports[$i]}"; done
}
proxies=()
for n in $(seq 1 "$nproxies"); do
  p=$(free_port)
  proxies+=("$p")
  {
    echo "listen = \"127.0.0.1:$p\""
    printf '[cluster]\netcd = ["127.0.0.1:%s"]\nname = "bench"\nid = "p%s"\n' "$etcd_port" "$n"
    backends 3
  } >"$dir/p$n.toml"
  RUST_LOG=info target/release/shardis --config "$dir/p$n.toml" 2>"$dir/p$n.log" &
  pids+=($!)
  wait_ports "$p"
done
proxy=${proxies[0]}
ctl() { target/release/shardis ctl --etcd "127.0.0.1:$etcd_port" --cluster bench "$@"; }
total() { local t=0 p; for p in "${ports[@]}"; do t=$((t + $(redis-cli -p "$p" dbsize))); done; echo "$t"; }

preload "$proxy" "$keys"
before=$(total)
echo "loaded: $before keys on 3 shards; $nproxies proxies"

gets() { # LABEL REQUESTS
  redis-benchmark -p "$proxy" -c 50 -n "$2" -r "$keys" --csv GET 'key:__rand_int__' 2>&1 | tr '\r' '\n' |
    awk -F'","' -v label="$1" '/rror/ { errors++ } /^"GET/ { rps=$2; p99=$7 }
      END { print label, "GET ops/s=" rps, "p99_ms=" p99, "error replies=" errors+0 }'
}
gets "before:" 200000
gets "during:" 400000 >"$dir/during.txt" &
load=$!
sleep 0.5
backends 4 >"$dir/four.toml"
t0=$(date +%s.%N)
ctl apply "$dir/four.toml"
t1=$(date +%s.%N)
wait "$load"
cat "$dir/during.txt"
after=$(total)
for n in $(seq 1 "$nproxies"); do
  python3 - "$dir/p$n.log" "p$n" <<'EOF'
import re, sys, datetime
def ts(line):
    return datetime.datetime.fromisoformat(line[:26].replace("Z", ""))
prep = serve = None
for line in open(sys.argv[1]):
    if "prepared epoch: holding" in line: prep = ts(line)
    if "committed epoch in service" in line: serve = ts(line)
if prep and serve:
    print(f"{sys.argv[2]}: moving keys held {(serve - prep).total_seconds() * 1000:.0f} ms (prepare -> new epoch in service)")
EOF
done
moved=$(ctl status --json | python3 -c 'import json,sys; m=json.load(sys.stdin)["migration"] or {}; print(m.get("moved",0)+m.get("moved_on_demand",0))')
echo "change: $(python3 -c "print(round($t1 - $t0, 2))") s from apply to stable; $moved keys moved ($(python3 -c "print(round($moved / ($t1 - $t0)))") keys/s)"
echo "keys: before $before, after $after$([ "$before" = "$after" ] && echo " (none lost or duplicated)" || echo " MISMATCH")"
