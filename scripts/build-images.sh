#!/usr/bin/env bash
# Builds the three local images, offline (no registry, no base image, no builder):
#
#   shardis/redis:local    redis-server + redis-cli from the host's Debian packages,
#                          + bash and redis-sentinel-start (Sentinel on a writable
#                          copy of its configuration)
#   shardis/shardis:local  target/release/shardis (+ redis-cli for healthchecks),
#                          config at /etc/shardis/proxy.toml, runs as uid 65534 (nobody)
#   shardis/etcd:local     etcd from Debian's etcd-server (the fleet's control plane,
#                          docker-compose.yml) + bash for its healthcheck, runs as 65534
#
# Each image is a `docker import` of a rootfs tarball: the binaries plus the
# shared libraries `ldd` lists. Works on any Docker engine (no BuildKit, no
# buildx, no `FROM`). Users with registry access can build the shardis image
# from the Dockerfile instead; see docs/containers.md.
#
# Idempotent: each image carries a label with a hash of its rootfs and
# settings, and is re-imported only when that hash changes. The release binary
# is built first (cargo build --release; a no-op when it is up to date).
#
# Environment:
#   SHARDIS_IMAGE_PREFIX  repository prefix (default "shardis")
#   SHARDIS_IMAGE_TAG     tag (default "local")
#   SHARDIS_NO_CARGO=1    never run cargo; use the binary as it is (fail if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

prefix=${SHARDIS_IMAGE_PREFIX:-shardis}
tag=${SHARDIS_IMAGE_TAG:-local}
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin="$target_dir/release/shardis"

say() { echo "build-images: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "cannot reach the Docker engine (is dockerd running, may this user use /var/run/docker.sock?)"

# Redis and etcd from Debian's packages. /usr/bin/redis-server is a symlink to
# redis-check-rdb; the file itself is copied below under the right name.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
  || ! command -v etcd >/dev/null 2>&1; then
  say "installing redis-server, redis-tools and etcd-server with apt-get"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server redis-tools etcd-server
fi

# The release binary: cargo rebuilds it if any source it is made of changed
# (and does nothing, in about a second, when it is up to date).
if [ "${SHARDIS_NO_CARGO:-0}" = 1 ]; then
  [ -x "$bin" ] || die "$bin is missing and SHARDIS_NO_CARGO=1"
else
  cargo build --release --locked --bin shardis >&2
  [ -x "$bin" ] || die "cargo did not produce $bin"
fi

work=$(mktemp -d -t shardis-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# copy_with_libs ROOTFS SRC DEST: copies SRC (dereferenced) to ROOTFS/DEST and
# every shared library it needs (as ldd resolves them on this host) to the
# same path inside ROOTFS.
copy_with_libs() {
  local rootfs=$1 src=$2 dest=$3
  mkdir -p "$rootfs/$(dirname "$dest")"
  cp -L "$src" "$rootfs/$dest"
  ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    [ -e "$rootfs$lib" ] || cp -L --parents "$lib" "$rootfs"
  done
}

# Common skeleton: a nobody user, /tmp, and empty files Docker bind-mounts over.
skeleton() {
  local rootfs=$1
  mkdir -p "$rootfs"/{etc,tmp,data}
  chmod 1777 "$rootfs/tmp" "$rootfs/data"
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  : >"$rootfs/etc/hosts"
  : >"$rootfs/etc/resolv.conf"
}

# import NAME ROOTFS CHANGE...: imports ROOTFS as NAME unless an image of that
# name already carries the same input hash.
import() {
  local name=$1 rootfs=$2
  shift 2
  local hash
  # File contents, modes and paths, plus the image settings, decide the hash.
  hash=$(
    cd "$rootfs"
    {
      find . -printf '%p %m %y %l\n' | LC_ALL=C sort
      find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
      printf '%s\n' "$@"
    } | sha256sum | cut -c1-32
  )
  local have
  have=$(docker image inspect -f '{{index .Config.Labels "shardis.inputs"}}' "$name" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    say "$name is up to date"
    return
  fi
  local old
  old=$(docker image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
  local args=()
  for c in "$@"; do args+=(--change "$c"); done
  args+=(--change "LABEL shardis.inputs=$hash")
  tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -c . \
    | docker import "${args[@]}" --message "scripts/build-images.sh" - "$name" >/dev/null
  say "built $name ($(docker image inspect -f '{{.Size}}' "$name" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
  # The previous image is now untagged; remove it unless a container uses it.
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$name")" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

# --- shardis/redis ---------------------------------------------------------
redis_root="$work/redis"
skeleton "$redis_root"
copy_with_libs "$redis_root" "$(command -v redis-server)" /usr/bin/redis-server
copy_with_libs "$redis_root" "$(command -v redis-cli)" /usr/bin/redis-cli
# Sentinel is redis-server --sentinel from this image, but it rewrites its
# configuration file (what it learns: replicas, other Sentinels, failovers), so
# it cannot run on a read-only bind mount. redis-sentinel-start (bash, no other
# tool in the image) copies the mounted file to /data once, then runs Sentinel
# on the copy (deploy/docker-compose.sentinel.yml).
copy_with_libs "$redis_root" "$(command -v bash)" /bin/bash
cat >"$redis_root/usr/bin/redis-sentinel-start" <<'SENTINEL'
#!/bin/bash
# redis-sentinel-start [CONF]: runs Sentinel on a writable copy of CONF
# (default /etc/redis/sentinel.conf) in /data; a restarted container keeps the
# copy, and with it what Sentinel had learnt.
src=${1:-/etc/redis/sentinel.conf}
dst=/data/sentinel.conf
[ -r "$src" ] || { echo "redis-sentinel-start: cannot read $src" >&2; exit 1; }
if [ ! -e "$dst" ]; then
  printf '%s\n' "$(<"$src")" >"$dst" || exit 1
fi
exec /usr/bin/redis-server "$dst" --sentinel
SENTINEL
chmod 0755 "$redis_root/usr/bin/redis-sentinel-start"
import "$prefix/redis:$tag" "$redis_root" \
  'ENTRYPOINT ["/usr/bin/redis-server"]' \
  'CMD ["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]' \
  'EXPOSE 6379' \
  'WORKDIR /data' \
  'USER 65534'

# --- shardis/shardis -------------------------------------------------------
shardis_root="$work/shardis"
skeleton "$shardis_root"
copy_with_libs "$shardis_root" "$bin" /usr/bin/shardis
# redis-cli, for healthchecks (`redis-cli -p 6380 ping`, answered by shardis
# itself) and for debugging from inside the network.
copy_with_libs "$shardis_root" "$(command -v redis-cli)" /usr/bin/redis-cli
# The release profile keeps line tables for profiling; the image does not need them.
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$shardis_root/usr/bin/shardis"
fi
mkdir -p "$shardis_root/etc/shardis"
cp deploy/compose-proxy.toml "$shardis_root/etc/shardis/proxy.toml"
chmod 0644 "$shardis_root/etc/shardis/proxy.toml"
import "$prefix/shardis:$tag" "$shardis_root" \
  'ENTRYPOINT ["/usr/bin/shardis", "--config", "/etc/shardis/proxy.toml"]' \
  'EXPOSE 6380' \
  'ENV NO_COLOR=1' \
  'ENV RUST_LOG=info' \
  'USER 65534'

# --- shardis/etcd ----------------------------------------------------------
# Debian's etcd (3.4; built with cgo, so it needs its libc, which
# copy_with_libs brings). Data in /data/etcd (the container's own layer: a new
# container starts an empty cluster). No etcdctl in Debian's etcd-server, so the
# healthcheck is bash asking GET /health over /dev/tcp (see etcd-health below).
etcd_root="$work/etcd"
skeleton "$etcd_root"
copy_with_libs "$etcd_root" "$(command -v etcd)" /usr/bin/etcd
copy_with_libs "$etcd_root" "$(command -v bash)" /bin/bash
cat >"$etcd_root/usr/bin/etcd-health" <<'HEALTH'
#!/bin/bash
# etcd-health [PORT]: exit 0 when the etcd on 127.0.0.1:PORT (2379) answers
# GET /health with {"health":"true"} (it has a leader and serves). Bash only:
# the image has no curl and no etcdctl.
exec 3<>"/dev/tcp/127.0.0.1/${1:-2379}" || exit 1
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
while IFS= read -r -t 2 line <&3 || [ -n "$line" ]; do
  case $line in *'"health":"true"'*) exit 0 ;; esac
  line=
done
exit 1
HEALTH
chmod 0755 "$etcd_root/usr/bin/etcd-health"
import "$prefix/etcd:$tag" "$etcd_root" \
  'ENTRYPOINT ["/usr/bin/etcd"]' \
  'CMD ["--name", "etcd", "--data-dir", "/data/etcd", "--listen-client-urls", "http://0.0.0.0:2379", "--advertise-client-urls", "http://localhost:2379"]' \
  'EXPOSE 2379' \
  'WORKDIR /data' \
  'USER 65534'

docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep "^$prefix/" >&2 || true
