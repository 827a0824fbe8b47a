#!/usr/bin/env bash
# Installs what the tests and the local cluster need, if missing:
# Debian's redis-server/redis-tools, etcd-server and protobuf-compiler (fleet
# mode), nutcracker (twemproxy, for benchmarks), chromium (headless, for the
# status page's browser test, tests/browser.rs) and redis-py for the Python
# client tests.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# etcd (the fleet's control plane, for the fleet tests and run-cluster.sh)
# and protoc (the etcd-client crate compiles etcd's protobuf definitions).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# bench/tls.sh makes its certificates with openssl (the tests use rcgen).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Headless Chromium renders the admin status page in tests/browser.rs.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
if [ "${SHARDIS_BENCH:-0}" = 1 ] && ! command -v nutcracker >/dev/null 2>&1 && [ ! -x /usr/sbin/nutcracker ]; then
  need+=(nutcracker)
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
# The redis-server package may start a system instance on 6379; tests never use it.
if ! python3 -c 'import redis, rq' >/dev/null 2>&1; then
  python3 -m pip install -q 'redis>=5' 'rq>=2' || python3 -m pip install -q --break-system-packages 'redis>=5' 'rq>=2'
fi
