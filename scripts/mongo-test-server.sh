#!/usr/bin/env bash
# A MongoDB-wire server for the cloudai-mongo tests: nx-27017 (the MongoDB
# wire protocol over SQLite, from PyPI) in a venv under target/.
#
#   scripts/mongo-test-server.sh [--port N] [--data-dir D] [--pid-file F]
#       Installs nx-27017 into target/nx-venv if needed, starts it in the
#       background on 127.0.0.1 (a free port unless --port; a fresh temporary
#       data directory unless --data-dir), waits until it answers a ping and
#       prints its URI, mongodb://127.0.0.1:PORT, on stdout (nothing else
#       goes to stdout). The pid file (default target/nx-27017/PORT.pid)
#       holds the pid, the data directory and whether this script created it.
#   scripts/mongo-test-server.sh --stop F
#       Stops the server named in pid file F and removes the data directory
#       if this script created it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

NX_VERSION=${NX_27017_VERSION:-0.8.1}
venv="$root/target/nx-venv"
log() { printf 'mongo-test-server: %s\n' "$*" >&2; }

stop() {
  local pid_file=$1 pid dir owned
  [[ -f "$pid_file" ]] || { log "no pid file $pid_file"; return 0; }
  { read -r pid; read -r dir; read -r owned; } <"$pid_file" || true
  if [[ -n "${pid:-}" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [[ "${owned:-0}" == 1 && -n "${dir:-}" && -d "$dir" ]]; then
    rm -rf -- "$dir"
  fi
  rm -f -- "$pid_file"
}

port=""
data_dir=""
pid_file=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --pid-file) pid_file=$2; shift 2 ;;
    --stop) stop "$2"; exit 0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
done

# The venv, once (re-created if broken or on another nx-27017 version).
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nx-27017') != '$NX_VERSION')" 2>/dev/null; then
  log "installing nx-27017 $NX_VERSION into $venv"
  rm -rf -- "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "nx-27017==$NX_VERSION" >&2
fi

if [[ -z "$port" ]]; then
  port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
fi
owned=0
if [[ -z "$data_dir" ]]; then
  data_dir=$(mktemp -d "${TMPDIR:-/tmp}/cloudai-nx-27017.XXXXXX")
  owned=1
fi
mkdir -p "$data_dir"
if [[ -z "$pid_file" ]]; then
  mkdir -p "$root/target/nx-27017"
  pid_file="$root/target/nx-27017/$port.pid"
fi

# Detached from our stdout (a caller's $(...) must not wait for the server)
# and from the terminal's signals.
setsid "$venv/bin/nx-27017" --data-dir "$data_dir" --host 127.0.0.1 -p "$port" \
  --log-file "$data_dir/nx-27017.log" --pid-file "$data_dir/nx-27017.pid" \
  </dev/null >"$data_dir/stdout.log" 2>&1 &
pid=$!
printf '%s\n%s\n%s\n' "$pid" "$data_dir" "$owned" >"$pid_file"

uri="mongodb://127.0.0.1:$port"
for _ in $(seq 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    log "nx-27017 exited during start-up:"
    tail -n 20 "$data_dir/stdout.log" >&2 || true
    stop "$pid_file"
    exit 1
  fi
  if "$venv/bin/python" - "$uri" <<'EOF' 2>/dev/null; then
import sys, pymongo
pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=300, connectTimeoutMS=300).admin.command("ping")
EOF
    printf '%s\n' "$uri"
    exit 0
  fi
  sleep 0.2
done
log "nx-27017 did not answer at $uri within the start-up bound"
stop "$pid_file"
exit 1
