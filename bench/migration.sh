#!/usr/bin/env bash
# Data migration under load: 3 shards holding KEYS keys, a fourth joins
# (SHARDIS.RELOAD), and GETs keep running through the proxy. Prints how long
# the migration took (INFO migration), how many keys moved (by the migrator
# and on demand; reads answered by the old or the new owner), GET throughput
# before, during (a run of 400,000 GETs that starts 1.3 s before the reload
# and outlasts the move), within the move's own window (the proxy's command
# count, also as a ratio of the second just before the reload) and after the
# move, any error replies seen, the CPU seconds each process used for the GETs
# before the move and within the move's window (from /proc/PID/stat and
# /usr/bin/time: the redis-servers, shardis, redis-benchmark), the
# migrator's Redis-side costs (INFO commandstats) and its log, and checks
# that no key was lost or duplicated. The load average is printed at the
# start and the end (the machine may be shared).
#
# Usage: bench/migration.sh [KEYS]   (default 1000000)
# MAX_KEYS_PER_SECOND=N sets [migration] max_keys_per_second (default: no limit);
# DURING_GETS=N the GETs of the run that spans the move (default 400000: make
# it outlast a slowed move).
keys=${1:-1000000}
limit=${MAX_KEYS_PER_SECOND:-0}
during=${DURING_GETS:-400000}
source "$(dirname "$0")/lib.sh"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
start_shards 4
proxy=$(free_port)
config() { # NUMBER-OF-SHARDS
  shardis_config "$proxy" "$1"
  [ "$limit" = 0 ] || printf '[migration]\nmax_keys_per_second = %s\n' "$limit"
}
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
  /usr/bin/time -f 'cpu %U %S' redis-benchmark -p "$proxy" -c 50 -n "$2" -r "$keys" GET 'key:__rand_int__' 2>&1 |
    tr '\r' '\n' | awk -v label="$1" '/^Error|rror from server/ { errors++ } /throughput summary/ { rps=$3 }
      /^cpu / { cpu=$2+$3 } END { print label, "GET ops/s=" rps, "error replies=" errors+0, "redis-benchmark CPU s=" cpu }'
}
# CPU seconds (user + system, every thread) of a process so far.
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpus() { for p in "$@"; do printf '%s ' "$(cpu "$p")"; done; }
names=(); for i in "${!ports[@]}"; do names+=("shard-$i"); done; names+=(shardis redis-benchmark)
cpu_report() { # LABEL T0 T1 "CPU0..." "CPU1..." [EXTRA-CPU-S]
  python3 - "$@" "${names[*]}" <<'EOF'
import sys
label, t0, t1, a, b, extra, names = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split(), sys.argv[6], sys.argv[7].split()
used = [float(y) - float(x) for x, y in zip(a, b)] + ([float(extra)] if extra else [])
w = t1 - t0
print(f"CPU seconds {label} ({w:.2f} s, 2 cores = {2 * w:.2f} CPU s):",
      ", ".join(f"{n} {u:.2f}" for n, u in zip(names, used)), f"| total {sum(used):.2f}")
EOF
}
b0=$(cpus "${pids[@]}"); tb0=$(date +%s.%N)
gets "before:" 200000 | tee "$dir/before.txt"
b1=$(cpus "${pids[@]}"); tb1=$(date +%s.%N)
cpu_report "for the GETs before the move" "$tb0" "$tb1" "$b0" "$b1" "$(sed 's/.*CPU s=//' "$dir/before.txt")"
gets "during:" "$during" >"$dir/during.txt" &
load=$!
cmds() { redis-cli -p "$proxy" info stats | tr -d '\r' | grep '^total_commands_processed:' | cut -d: -f2; }
# The GET rate of the second before the reload, within the same run (the
# machine's load changes between runs and even between phases of one).
sleep 0.3
cp0=$(cmds); tp0=$(date +%s.%N)
sleep 1
config 4 >"$dir/proxy.toml"
bench_pid=$(pgrep -f "^redis-benchmark -p $proxy -c 50 -n $during" | head -1 || true)
watched=("${pids[@]}" ${bench_pid:+"$bench_pid"})
cpu0=$(cpus "${watched[@]}")
c0=$(cmds)
t0=$(date +%s.%N)
echo "SHARDIS.RELOAD -> epoch $(redis-cli -p "$proxy" shardis.reload)"
while [ "$(info migration_in_progress)" != 0 ]; do sleep 0.05; done
t1=$(date +%s.%N)
c1=$(cmds)
cpu1=$(cpus "${watched[@]}")
wait "$load"
cat "$dir/during.txt"
rate() { sed 's/.*ops\/s=\([0-9.]*\).*/\1/' "$1"; }
# The GETs of the move's own window (the proxy's command count, polls included).
echo "GET ops/s while keys moved: $(python3 -c "print(round(($c1 - $c0) / ($t1 - $t0)))")" \
  "($(python3 -c "print(f'{100 * ($c1 - $c0) / ($t1 - $t0) / $(rate "$dir/before.txt"):.0f}%')") of before)"
echo "GET ops/s in the second before the reload: $(python3 -c "print(round(($c0 - $cp0) / ($t0 - $tp0)))");" \
  "while keys moved / that: $(python3 -c "print(f'{100 * (($c1 - $c0) / ($t1 - $t0)) / (($c0 - $cp0) / ($t0 - $tp0)):.0f}%')")"
echo "GET throughput during/before: $(python3 -c "print(f'{100 * $(rate "$dir/during.txt") / $(rate "$dir/before.txt"):.0f}%')")"
cpu_report "within the move's window" "$t0" "$t1" "$cpu0" "$cpu1" ""
gets "after:" 200000
after=$(total)
echo "migration: $(info migration_seconds) s (INFO; polled: $(python3 -c "print(round($t1 - $t0, 2))") s)," \
  "scanned $(info migration_keys_scanned), moved $(info migration_keys_moved)," \
  "moved on demand $(info migration_keys_moved_on_demand), read on the old owner $(info migration_reads_old_owner)," \
  "read on the new owner $(info migration_reads_new_owner), superseded $(info migration_keys_superseded)," \
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
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
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
