#!/usr/bin/env bash
# Data migration under load: 3 shards holding KEYS keys, a fourth joins
# (SHARDIS.RELOAD), and GETs keep running through the proxy. Prints how long
# the migration took (INFO migration), how many keys moved (by the migrator
# and on demand), GET throughput before, during (a run of 400,000 GETs that
# starts 0.5 s before the reload and outlasts the move), within the move's own
# window (the proxy's command count) and after the move, any error replies
# seen, the migrator's Redis-side costs (INFO commandstats) and its log, and
# checks that no key was lost or duplicated.
#
# Usage: bench/migration.sh [KEYS]   (default 1000000)
keys=${1:-1000000}
source "$(dirname "$0")/lib.sh"
start_shards 4
proxy=$(free_port)
config() { shardis_config "$proxy" "$1"; } # NUMBER-OF-SHARDS
config 3 >"$dir/proxy.toml"
RUST_LOG=info target/release/shardis --config "$dir/proxy.toml" 2>"$dir/shardis.log" &
pids+=($!)
wait_ports "${ports[@]}" "$proxy"
info() { redis-cli -p "$proxy" info migration | tr -d '\r' | grep "^$1:" | cut -d: -f2; }
total() { local t=0; for p in "${ports[@]}"; do t=$((t + $(redis-cli -p "$p" dbsize))); done; echo "$t"; }

# Load: key:0 .. key:KEYS-1, 16-byte values, pipelined through the proxy.
preload "$proxy" "$keys"
before=$(total)
echo "loaded: $before keys on 3 shards"

gets() { # LABEL REQUESTS
  redis-benchmark -p "$proxy" -c 50 -n "$2" -r "$keys" GET 'key:__rand_int__' 2>&1 | tr '\r' '\n' |
    awk -v label="$1" '/^Error|rror from server/ { errors++ } /throughput summary/ { rps=$3 }
      END { print label, "GET ops/s=" rps, "error replies=" errors+0 }'
}
gets "before:" 200000 | tee "$dir/before.txt"
gets "during:" 400000 >"$dir/during.txt" &
load=$!
sleep 0.5
config 4 >"$dir/proxy.toml"
cmds() { redis-cli -p "$proxy" info stats | tr -d '\r' | grep '^total_commands_processed:' | cut -d: -f2; }
c0=$(cmds)
t0=$(date +%s.%N)
echo "SHARDIS.RELOAD -> epoch $(redis-cli -p "$proxy" shardis.reload)"
while [ "$(info migration_in_progress)" != 0 ]; do sleep 0.05; done
t1=$(date +%s.%N)
c1=$(cmds)
wait "$load"
cat "$dir/during.txt"
rate() { sed 's/.*ops\/s=\([0-9.]*\).*/\1/' "$1"; }
# The GETs of the move's own window (the proxy's command count, polls included).
echo "GET ops/s while keys moved: $(python3 -c "print(round(($c1 - $c0) / ($t1 - $t0)))")" \
  "($(python3 -c "print(f'{100 * ($c1 - $c0) / ($t1 - $t0) / $(rate "$dir/before.txt"):.0f}%')") of before)"
echo "GET throughput during/before: $(python3 -c "print(f'{100 * $(rate "$dir/during.txt") / $(rate "$dir/before.txt"):.0f}%')")"
gets "after:" 200000
after=$(total)
echo "migration: $(info migration_seconds) s (INFO; polled: $(python3 -c "print(round($t1 - $t0, 2))") s)," \
  "scanned $(info migration_keys_scanned), moved $(info migration_keys_moved)," \
  "moved on demand $(info migration_keys_moved_on_demand), superseded $(info migration_keys_superseded)," \
  "errors $(info migration_errors)"
echo "speed: $(python3 -c "print(round(($(info migration_keys_moved) + $(info migration_keys_moved_on_demand)) / $(info migration_seconds)))") keys/s (moved + on demand, per INFO second)"
# Where the time went, Redis-side: calls and usec_per_call of the migrator's
# commands (SCAN, MIGRATE on the sources; RESTORE on the target).
for i in "${!ports[@]}"; do
  echo "shard-$i commandstats: $(redis-cli -p "${ports[$i]}" info commandstats | tr -d '\r' |
    grep -E '^cmdstat_(scan|migrate|restore|restore-asking|get):' | sed 's/^cmdstat_//; s/,rejected_calls.*//' | tr '\n' ' ')"
done
grep -E 'migration' "$dir/shardis.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-400 || true
echo "keys per shard after: $(for p in "${ports[@]}"; do printf '%s ' "$(redis-cli -p "$p" dbsize)"; done)"
echo "keys before: $before, after: $after"
[ "$before" = "$after" ] || { echo "FAIL: key count changed"; exit 1; }
# Every key reads back through the proxy with its value (a sample of 1000).
python3 - "$proxy" "$keys" <<'EOF'
import random, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
for i in random.sample(range(n), min(n, 1000)):
    k = b"key:%012d" % i
    s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k))
    head = f.readline()
    assert head == b"$16\r\n", (k, head)
    assert f.readline() == b"%016d\r\n" % i, k
print("sample of 1000 keys: every value read back through the proxy")
EOF
