#!/usr/bin/env bash
# A Docker registry on 127.0.0.1 for the image-pull tests: Debian's
# docker-registry (installed with apt-get if it is missing), storage in a
# fresh temporary directory. The Docker daemon pulls from a registry on
# 127.0.0.0/8 over plain HTTP without extra configuration.
#
#   scripts/registry-test-server.sh --pid-file F
#       Starts it on a free port, waits until it answers and prints its
#       address, 127.0.0.1:PORT, on stdout (nothing else goes to stdout).
#   scripts/registry-test-server.sh --stop F
#       Stops it and removes its storage.
set -euo pipefail
log() { printf 'registry-test-server: %s\n' "$*" >&2; }

stop() {
  local pid_file=$1 pid dir
  [[ -f "$pid_file" ]] || return 0
  { read -r pid; read -r dir; } <"$pid_file" || true
  if [[ -n "${pid:-}" ]]; then kill "$pid" 2>/dev/null || true; fi
  if [[ -n "${dir:-}" && -d "$dir" ]]; then rm -rf -- "$dir"; fi
  rm -f -- "$pid_file"
}

pid_file=""
case ${1:-} in
  --pid-file) pid_file=$2 ;;
  --stop) stop "$2"; exit 0 ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

if ! command -v docker-registry >/dev/null; then
  log "installing Debian's docker-registry"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-registry; } >&2
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d "${TMPDIR:-/tmp}/cloudai-registry.XXXXXX")
cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
printf '%s\n%s\n' "$!" "$dir" >"$pid_file"
for _ in $(seq 100); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=1)" 2>/dev/null; then
    echo "127.0.0.1:$port"
    exit 0
  fi
  sleep 0.1
done
log "the registry did not answer on 127.0.0.1:$port; its log:"
cat "$dir/registry.log" >&2
stop "$pid_file"
exit 1
