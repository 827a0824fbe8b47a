#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need
# (Debian's redis-server, redis-tools, etcd-server, redis-py) if missing, then
# runs unit tests, integration tests against real redis-server processes,
# container tests, and doc tests.
#
# Everything is built first (`cargo test --all-targets --no-run`, plus the
# release binary the container images are made of), then the test binaries run
# in two phases of two lanes each, on a 2-core machine:
#
#   phase 1:  it (local redis-server processes), alone: its lock tests are
#             timing-sensitive
#   phase 2:  fleet (local etcd + processes), then  |  containers (Docker)
#             sentinel (redis-server masters,
#             replicas and Sentinels), then the lib's
#             and bin's unit tests, the other test
#             binaries (browser: headless Chromium
#             on the status page), the benches in
#             test mode, doc tests
#
# Lanes never share a resource other than the CPU: tests take free ports, and
# Docker's containers only publish on ports Docker picks or the tests found
# free. Each binary's output goes to a file and is printed whole when it ends;
# the script fails if any binary fails, after all have run.
#
# Arguments as for `cargo test`: a test-name filter and/or `-- <test args>`
# (e.g. `scripts/test.sh reload -- --nocapture`) go to every binary, doc tests
# included. An option for cargo itself (anything before `--` starting with
# `-`, e.g. `--release`), or SHARDIS_TEST_SERIAL=1, runs the plain sequential
# `cargo test --all-targets ARGS` + `cargo test --doc` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

serial=${SHARDIS_TEST_SERIAL:-0}
for a in "$@"; do
  [ "$a" = "--" ] && break
  case $a in -*) serial=1 ;; esac
done
if [ "$serial" = 1 ]; then
  cargo test --all-targets "$@"
  cargo test --doc
  exit
fi

# Arguments for the test binaries: cargo's `NAME -- ARGS` becomes `NAME ARGS`.
test_args=()
seen_dashes=0
for a in "$@"; do
  if [ "$a" = "--" ] && [ "$seen_dashes" = 0 ]; then
    seen_dashes=1
    continue
  fi
  test_args+=("$a")
done

logs=$(mktemp -d -t shardis-test.XXXXXX)
trap 'rm -rf "$logs"' EXIT
t0=$(date +%s)
say() { echo "test.sh [$(($(date +%s) - t0))s]: $*" >&2; }

# --- build ------------------------------------------------------------------
say "building the test binaries"
cargo test --all-targets --no-run --message-format=json-render-diagnostics >"$logs/build.json"
# The release binary, for the container images (scripts/build-images.sh, run by
# tests/containers.rs, then only imports): built here, not during the tests.
if [ "${SHARDIS_SKIP_RELEASE:-0}" != 1 ] && docker version >/dev/null 2>&1; then
  say "building the release binary (container images)"
  cargo build --release --locked --bin shardis
fi

# Test executables: "<label> <path>" per line, every target cargo built with
# the test harness, i.e. what `cargo test --all-targets` runs. Labels: lib,
# bin-<name>, test-<name>, bench-<name>, example-<name>.
python3 - "$logs/build.json" >"$logs/executables" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m["profile"]["test"] or not m.get("executable"):
        continue
    kind = m["target"]["kind"][0]
    label = "lib" if kind == "lib" else f"{kind}-{m['target']['name']}"
    if label not in seen:
        seen.add(label)
        print(label, m["executable"])
PY
say "test binaries: $(cut -d' ' -f1 "$logs/executables" | tr '\n' ' ')"

exe_of() { awk -v l="$1" '$1 == l { print $2 }' "$logs/executables"; }

# run LABEL CMD...: runs CMD with its output in $logs/LABEL.log, its exit code
# in $logs/LABEL.rc and its wall time in $logs/LABEL.secs.
run() {
  local label=$1 start rc
  shift
  start=$(date +%s)
  say "start $label"
  set +e
  "$@" >"$logs/$label.log" 2>&1
  rc=$?
  set -e
  echo "$rc" >"$logs/$label.rc"
  echo $(($(date +%s) - start)) >"$logs/$label.secs"
  # The whole log at once, never interleaved with the other lane's.
  {
    flock 9
    echo "======== $label: $*"
    cat "$logs/$label.log"
    echo "======== $label: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") in $(cat "$logs/$label.secs")s"
  } 9>"$logs/print.lock"
}

# run_bin LABEL: the executable of LABEL with the test arguments, from the
# package root with cargo's environment (as `cargo test` runs it).
run_bin() {
  local exe
  exe=$(exe_of "$1")
  [ -n "$exe" ] || return 0
  run "$1" env CARGO_MANIFEST_DIR="$PWD" CARGO_PKG_NAME=shardis "$exe" "${test_args[@]}"
}

# lane LABEL...: runs the labels one after the other.
lane() {
  for l in "$@"; do run_bin "$l"; done
}

# Light: every other test binary (test-command_table, test-browser, ...),
# the lib's and bin's unit tests and the benches, from the list above.
heavy=(test-it test-fleet test-sentinel test-containers)
light=()
while read -r label _; do
  case " ${heavy[*]} " in *" $label "*) ;; *) light+=("$label") ;; esac
done <"$logs/executables"

# Phase 1: it, alone. Its lock tests SIGSTOP a member and require progress
# within 1.5 s windows; beside the criterion bench and the doc-test build they
# missed it once on 2 cores (locks::mutual_exclusion_with_a_member_hung_then_killed).
lane test-it

# Phase 2: fleet, then sentinel, then everything light and the doc tests
# (cargo builds them: CPU) | containers (mostly waiting on Docker; the longest
# lane). Sentinel (about 75 s of failovers, each timed against the Sentinels'
# own) runs after fleet rather than beside it, before the doc-test build.
(
  lane test-fleet
  lane test-sentinel
  lane "${light[@]}"
  run doc cargo test --doc -- "${test_args[@]}"
) &
p_fleet=$!
lane test-containers &
p_containers=$!
wait "$p_fleet" "$p_containers" || true

# --- summary ----------------------------------------------------------------
failed=()
echo
echo "test.sh summary (wall $(($(date +%s) - t0))s; per binary, seconds):"
for f in "$logs"/*.rc; do
  label=$(basename "$f" .rc)
  rc=$(cat "$f")
  printf '  %-28s %5ss  %s\n' "$label" "$(cat "$logs/$label.secs")" "$([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)")"
  [ "$rc" = 0 ] || failed+=("$label")
done
# Totals from libtest's "test result:" lines; a failed binary that printed
# none (it crashed, or never started) counts as one failed test.
passed=0
nfailed=0
for f in "$logs"/*.rc; do
  label=$(basename "$f" .rc)
  read -r p q < <(awk '/^test result: /{ for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) q += $i } }
                       END { print p + 0, q + 0 }' "$logs/$label.log")
  passed=$((passed + p))
  nfailed=$((nfailed + q))
  if [ "$(cat "$f")" != 0 ] && [ "$q" = 0 ]; then nfailed=$((nfailed + 1)); fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]}"
  echo "total: $passed passed, $nfailed failed"
  exit 1
fi
echo "total: $passed passed, $nfailed failed"
