#!/usr/bin/env bash
# Builds the Docker test image `cloudai-test-busybox:latest` FROM scratch with
# Debian's busybox-static (no registry is reachable here), if it is missing,
# and checks that the daemon's init runs in it (`docker run --init`, as the
# Docker runtime runs tasks by default). Fails with a clear message when
# there is no Docker daemon or its init does not run.
set -euo pipefail
IMAGE=${CLOUDAI_TEST_IMAGE:-cloudai-test-busybox:latest}

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker daemon answers (docker info failed); start dockerd first" >&2
  exit 1
fi
# The daemon bind-mounts its init (docker-init, a tini) into the container,
# so it must run even in this FROM scratch image: the shell is then not
# PID 1, and the init exits with the shell's code.
check_init() {
  local out code=0
  out=$(docker run --rm --init "$IMAGE" sh -c 'echo "pid $$"; exit 7' 2>&1) || code=$?
  if [ "$code" != 7 ] || [ "$out" = "pid 1" ] || [[ "$out" != "pid "* ]]; then
    echo "error: the Docker daemon's init does not run in $IMAGE" \
      "(docker run --init ... sh -c 'echo pid \$\$; exit 7' gave exit $code: $out);" \
      "install docker-init (tini) for the daemon: Docker tasks run under it by default" >&2
    exit 1
  fi
}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  check_init
  exit 0
fi
busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && file -L "$candidate" 2>/dev/null | grep -q "statically linked"; then
    busybox=$candidate
  fi
done
if [ -z "$busybox" ]; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static file >/dev/null
  fi
  busybox=/bin/busybox
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$busybox" "$context/busybox"
cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
CMD ["/bin/sh"]
DOCKERFILE
docker build -q -t "$IMAGE" "$context" >/dev/null
echo "built $IMAGE" >&2
check_init
