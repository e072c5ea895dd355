#!/usr/bin/env bash
# What the dashboard's browser test needs: Debian's chromium and
# chromium-driver (installed with apt-get when missing) and Selenium in a
# venv under target/. Prints the venv's python on stdout (nothing else goes
# to stdout).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'browser-test-env: %s\n' "$*" >&2; }

SELENIUM_VERSION=${SELENIUM_VERSION:-4.45.0}
venv="$(pwd)/target/browser-venv"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  log "installing Debian's chromium and chromium-driver"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >&2
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('selenium') != '$SELENIUM_VERSION')" 2>/dev/null; then
  log "installing selenium $SELENIUM_VERSION into $venv"
  rm -rf -- "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION" >&2
fi
echo "$venv/bin/python"
