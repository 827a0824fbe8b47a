#!/usr/bin/env bash
# Quick start for a fleet: installs Redis and etcd if missing, starts etcd on
# 127.0.0.1:2379, four redis-server shards on 7001-7004 (7004 unused until you
# apply deploy/cluster-backends-4.toml), builds shardis and runs two proxies,
# 127.0.0.1:6380 (deploy/cluster-proxy-a.toml) and 127.0.0.1:6381
# (deploy/cluster-proxy-b.toml), sharing one topology in etcd (cluster "local").
# Ctrl-C stops the proxies, the shards and etcd; their data is thrown away.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

# Refuse to start on ports in use rather than talk to someone else's server.
for port in 2379 2380 7001 7002 7003 7004 6380 6381; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "run-cluster: 127.0.0.1:$port is in use (another run-cluster.sh or run-local.sh?)" >&2
    exit 1
  fi
done

dir=$(mktemp -d -t shardis-cluster.XXXXXX)
proxies=()
others=()
cleanup() {
  trap - EXIT INT TERM
  # Proxies first, while etcd is still up: SIGTERM lets each one leave the fleet.
  # They finish within shutdown_ms (5 s by default); past 10 s, SIGKILL.
  for p in "${proxies[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${proxies[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${proxies[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${others[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
# Every server runs in a session of its own (setsid), so Ctrl-C reaches only
# this script, and cleanup stops them in order.

# The ends of etcd's and the shards' logs (the proxies log to this terminal);
# cleanup removes them.
show_logs() {
  local f
  for f in "$dir"/*.log; do
    echo "--- $f" >&2
    tail -n 5 "$f" >&2
  done
}
# wait_for WHAT CMD...: retries CMD for up to 30 s; gives up at once when a
# server started so far has exited (a bad configuration, a port taken).
wait_for() {
  local what=$1 p
  shift
  for _ in $(seq 300); do
    "$@" >/dev/null 2>&1 && return 0
    for p in "${others[@]}" "${proxies[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "run-cluster: a server exited while waiting for $what" >&2
        show_logs
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "run-cluster: $what did not come up within 30 s" >&2
  show_logs
  exit 1
}
# etcd answers GET /health with {"health":"true"} once it has a leader.
etcd_healthy() (
  exec 3<>/dev/tcp/127.0.0.1/2379 || exit 1
  printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  while IFS= read -r -t 2 line <&3 || [ -n "$line" ]; do
    case $line in *'"health":"true"'*) exit 0 ;; esac
    line=
  done
  exit 1
)

setsid etcd --name run-cluster --data-dir "$dir/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster run-cluster=http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
others+=($!)
for port in 7001 7002 7003 7004; do
  setsid redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" &
  others+=($!)
done
cargo build --release
wait_for "etcd on 127.0.0.1:2379" etcd_healthy

for n in a b; do
  setsid target/release/shardis --config "deploy/cluster-proxy-$n.toml" &
  proxies+=($!)
done
wait_for "shardis on 127.0.0.1:6380" redis-cli -p 6380 ping
wait_for "shardis on 127.0.0.1:6381" redis-cli -p 6381 ping
target/release/shardis ctl --etcd 127.0.0.1:2379 --cluster local status || true

cat <<'EOF'

A shardis fleet: proxies on 127.0.0.1:6380 and 127.0.0.1:6381, one topology in
etcd 127.0.0.1:2379 (cluster "local"), shards 127.0.0.1:7001-7003 (7004 spare).

  redis-cli -p 6380 set user:1 alice; redis-cli -p 6381 get user:1
  target/release/shardis ctl --etcd 127.0.0.1:2379 --cluster local status
  target/release/shardis ctl --etcd 127.0.0.1:2379 --cluster local apply deploy/cluster-backends-4.toml
      # adds shard-d (127.0.0.1:7004): both proxies take the new epoch, keys move
  target/release/shardis ctl --etcd 127.0.0.1:2379 --cluster local status --json

Ctrl-C stops everything.
EOF
# Until Ctrl-C, or until a proxy exits on its own.
wait -n "${proxies[@]}"
