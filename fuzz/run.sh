#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 60), one after the
# other, on one core each, then minimizes each corpus. Not part of CI: CI's
# time budget goes to the tests; run this by hand (or on a spare machine)
# after changing the parser, the reply scanner, the merges or the config.
#
#   fuzz/run.sh [seconds-per-target] [target ...]
#
# Needs a nightly toolchain and cargo-fuzz: `cargo install cargo-fuzz`.
# A crash leaves its input in fuzz/artifacts/<target>/ and stops that target
# (the script goes on with the next and exits non-zero at the end); replay it
# with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...`.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request_parser reply_scanner merge config)
fi
cargo +nightly fuzz build || exit 1
failed=()
for t in "${targets[@]}"; do
    extra=()
    if [ "$t" = config ]; then
        extra=(-dict=fuzz/config.dict)
    fi
    echo "== $t: ${secs}s"
    if ! cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=10 "${extra[@]}"; then
        failed+=("$t")
        continue
    fi
    cargo +nightly fuzz cmin "$t" -- -set_cover_merge=1 -use_counters=0 >/dev/null 2>&1 || echo "cmin $t failed"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
