#!/usr/bin/env bash
# The project's test command: every crate, every feature, doc-tests included.
# Sets up whatever the tests need first, so it works on a fresh machine:
# the Docker test image (built FROM scratch with Debian's busybox-static)
# and, unless CLOUDAI_TEST_MONGO_URI names a server, a MongoDB-wire server.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/docker-test-image.sh

# --- MongoDB-wire test server ---
# The cloudai-mongo tests and examples/tests/mongo_restart.rs need a server
# speaking the MongoDB wire protocol. Unless CLOUDAI_TEST_MONGO_URI names
# one, start nx-27017 (installed into target/nx-venv on first use) on a free
# port, and stop it (removing its data) when this script exits.
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT
if [[ -z "${CLOUDAI_TEST_MONGO_URI:-}" ]]; then
  mongo_pid_file=$(mktemp "${TMPDIR:-/tmp}/cloudai-mongo-test.XXXXXX")
  cleanup+=('scripts/mongo-test-server.sh --stop "$mongo_pid_file"')
  CLOUDAI_TEST_MONGO_URI=$(scripts/mongo-test-server.sh --pid-file "$mongo_pid_file")
  export CLOUDAI_TEST_MONGO_URI
  echo "MongoDB-wire test server (nx-27017) at $CLOUDAI_TEST_MONGO_URI" >&2
fi
# --- end MongoDB-wire test server ---

# --- Docker registry for the image-pull tests ---
# examples/tests/docker_cluster.rs pulls from a registry on 127.0.0.1:
# unless CLOUDAI_TEST_REGISTRY names one, start Debian's docker-registry.
if [[ -z "${CLOUDAI_TEST_REGISTRY:-}" ]]; then
  registry_pid_file=$(mktemp "${TMPDIR:-/tmp}/cloudai-registry-test.XXXXXX")
  cleanup+=('scripts/registry-test-server.sh --stop "$registry_pid_file"')
  CLOUDAI_TEST_REGISTRY=$(scripts/registry-test-server.sh --pid-file "$registry_pid_file")
  export CLOUDAI_TEST_REGISTRY
  echo "Docker registry for the pull tests at $CLOUDAI_TEST_REGISTRY" >&2
fi

# --- Chromium and Selenium for the dashboard's browser test ---
if [[ -z "${CLOUDAI_TEST_BROWSER_PYTHON:-}" ]]; then
  CLOUDAI_TEST_BROWSER_PYTHON=$(scripts/browser-test-env.sh)
  export CLOUDAI_TEST_BROWSER_PYTHON
fi

# --- ip and iptables for the partition test ---
# examples/tests/partition.rs runs a cluster across two network namespaces
# of its own and cuts the link between them with iptables; it needs root
# and skips, saying why, without them. Install Debian's iproute2 and
# iptables when they are missing.
have() { PATH=$PATH:/usr/sbin:/sbin command -v "$1" >/dev/null; }
if [[ $(id -u) = 0 ]] && ! { have ip && have iptables; }; then
  echo "installing Debian's iproute2 and iptables for the partition test" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 iptables; } >&2
fi

cargo test --workspace --all-features "$@"
