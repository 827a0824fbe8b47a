# Shared by the bench/*.sh scripts (sourced, not run): build, a temp dir
# cleaned up on exit, redis-server shards on free loopback ports, and a
# shardis configuration over them.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-deps.sh >/dev/null
cargo build --release --bin shardis >&2
dir=$(mktemp -d -t shardis-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_shards N: N redis-servers; their ports in ${ports[@]}.
ports=()
start_shards() {
  local i p
  for i in $(seq 0 $(($1 - 1))); do
    p=$(free_port); ports+=("$p")
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --logfile "$dir/r$i.log" &
    pids+=($!)
  done
}

# shardis_config PORT N: a configuration listening on PORT over the first N shards.
shardis_config() {
  local i
  echo "listen = \"127.0.0.1:$1\""
  for i in $(seq 0 $(($2 - 1))); do printf '[[backends]]\nname = "shard-%s"\naddr = "127.0.0.1:%s"\n' "$i" "${ports[$i]}"; done
}

# wait_ports PORT...: until each answers PING.
wait_ports() {
  local p
  for p in "$@"; do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
  done
}

# preload PORT KEYS: key:000000000000 .. KEYS-1 with 16-byte values, pipelined
# through whatever listens on PORT.
preload() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
batch = 1000
for start in range(0, n, batch):
    buf = bytearray()
    for i in range(start, min(n, start + batch)):
        k = b"key:%012d" % i
        buf += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$16\r\n%016d\r\n" % (len(k), k, i)
    s.sendall(buf)
    want, got = (min(n, start + batch) - start) * 5, 0
    while got < want:
        got += len(s.recv(1 << 20))
PY
}

# make_certs: a CA (ca.pem) and a server certificate for 127.0.0.1 and
# localhost (server.pem, server.key) in $dir, ECDSA P-256, with openssl.
make_certs() {
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
      -days 2 -subj "/CN=shardis bench CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr \
      -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
      -extfile ext 2>/dev/null
  )
}
