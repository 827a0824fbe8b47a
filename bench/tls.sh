#!/usr/bin/env bash
# What TLS costs: redis-benchmark against one shardis (threads = 1) over
# plain TCP and over TLS, and against a second shardis whose backends are
# TLS too (redis-server with --tls-port), GET and SET, -P 1 and -P 16,
# -c 50 -n 100000 each, repeated REPS times (median). Prints ops/s and the
# proxy's CPU per request (utime + stime from /proc/PID/stat around each
# run; the three variants interleaved, medians). The certificates are made
# with openssl (lib.sh's make_certs: ECDSA P-256, a CA and a server
# certificate for 127.0.0.1 and localhost).
#
#   bench/tls.sh            # REPS=3
#   REPS=1 N=50000 bench/tls.sh
source "$(dirname "$0")/lib.sh"
reps=${REPS:-3}
n=${N:-100000}
bin=${SHARDIS:-target/release/shardis}

make_certs

# Plain shards, and TLS-only shards for the second proxy.
start_shards 3
tls_ports=()
for i in 0 1 2; do
  p=$(free_port); tls_ports+=("$p")
  redis-server --port 0 --tls-port "$p" --tls-cert-file "$dir/server.pem" --tls-key-file "$dir/server.key" \
    --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients no --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/t$i.log" &
  pids+=($!)
done
wait_ports "${ports[@]}"

plain=$(free_port); tls=$(free_port); both=$(free_port)
{
  echo "threads = 1"
  shardis_config "$plain" 3
  printf '[tls]\ncert = "%s"\nkey = "%s"\nlisten = "127.0.0.1:%s"\n' "$dir/server.pem" "$dir/server.key" "$tls"
} >"$dir/a.toml"
{
  echo "threads = 1"
  echo "listen = \"127.0.0.1:$both\""
  printf '[tls]\ncert = "%s"\nkey = "%s"\nbackend_ca = "%s"\n' "$dir/server.pem" "$dir/server.key" "$dir/ca.pem"
  for i in 0 1 2; do
    printf '[[backends]]\nname = "shard-%s"\naddr = "127.0.0.1:%s"\ntls = true\n' "$i" "${tls_ports[$i]}"
  done
} >"$dir/b.toml"
RUST_LOG=warn "$bin" --config "$dir/a.toml" 2>"$dir/a.log" & pa=$!; pids+=($pa)
RUST_LOG=warn "$bin" --config "$dir/b.toml" 2>"$dir/b.log" & pb=$!; pids+=($pb)
wait_ports "$plain"
sleep 0.5
tlsargs=(--tls --cacert "$dir/ca.pem")
redis-cli "${tlsargs[@]}" -p "$both" ping >/dev/null || { echo "tls.sh: the TLS proxy does not answer" >&2; tail "$dir/b.log" >&2; exit 1; }
# Warm the key space of both (GETs find values).
redis-benchmark -p "$plain" -c 50 -P 16 -n 100000 -r 100000 -t set -q >/dev/null
redis-benchmark "${tlsargs[@]}" -p "$both" -c 50 -P 16 -n 100000 -r 100000 -t set -q >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# run PID PORT TEST P [TLS...]: one redis-benchmark run, "ops/s cpu_us_per_request".
run() {
  local pid=$1 port=$2 test=$3 p=$4; shift 4
  local t0 t1 ops
  t0=$(cpu_ticks "$pid")
  ops=$(redis-benchmark "$@" -p "$port" -c 50 -n "$n" -r 100000 -P "$p" -t "$test" -q 2>&1 | tr '\r' '\n' \
    | grep -i "requests per second" | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/')
  t1=$(cpu_ticks "$pid")
  echo "$ops $(echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l)"
}

# median COLUMN < runs: the median of one column.
median() { sort -n -k"$1" | awk -v c="$1" -v m=$(((reps + 1) / 2)) 'NR == m { print $c }'; }

# The three variants of one test are interleaved run by run, so the noise
# of a shared machine falls on all three alike; medians of each column.
printf '%-5s %-4s | %-30s | %-30s | %-30s\n' test P "plain" "TLS clients" "TLS clients and backends"
for test in get set; do
  for p in 1 16; do
    : >"$dir/a" ; : >"$dir/b" ; : >"$dir/c"
    for _ in $(seq "$reps"); do
      run "$pa" "$plain" "$test" "$p" >>"$dir/a"
      run "$pa" "$tls" "$test" "$p" "${tlsargs[@]}" >>"$dir/b"
      run "$pb" "$both" "$test" "$p" "${tlsargs[@]}" >>"$dir/c"
    done
    cells=()
    for f in a b c; do
      cells+=("$(printf '%8.0f ops/s %5.1f us CPU/req' "$(median 1 <"$dir/$f")" "$(median 2 <"$dir/$f")")")
    done
    printf '%-5s %-4s | %s | %s | %s\n' "$test" "$p" "${cells[@]}"
  done
done
