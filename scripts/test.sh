#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need
# (Debian's redis-server and redis-tools, redis-py) if missing, then runs
# unit tests, integration tests against real redis-server processes, and
# doc tests. Extra arguments go to `cargo test` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --all-targets "$@"
cargo test --doc
