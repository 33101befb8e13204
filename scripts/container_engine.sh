#!/usr/bin/env bash
# A Docker-API container engine for this machine: podman serving the Docker Engine API on a unix
# socket (prefect-docker's Docker worker and the docker SDK talk to it), configured privately.
#
#   bash scripts/container_engine.sh          # set up (idempotent) and start the engine
#   bash scripts/container_engine.sh stop     # stop the engine this script started
#
# Everything lives under $STUDIO_ENGINE_DIR (default: <repo>/.studio/engine): containers.conf,
# storage.conf, the image storage, podman.sock, and `env` (DOCKER_HOST=..., to source).
# Nothing is written to /etc/containers. With no registry reachable, the base image
# localhost/debian:bookworm is built from Debian's packages (mmdebstrap) and imported.
#
# Exit codes: 0 the engine answers; 3 skipped (the reason is printed: not root, no apt, ...);
# 1 set-up failed (the reason is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DIR=${STUDIO_ENGINE_DIR:-$REPO/.studio/engine}
SOCK=$DIR/podman.sock
BASE_IMAGE=localhost/debian:bookworm
export CONTAINERS_CONF=$DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$DIR/storage.conf

say() { echo "container engine: $*"; }
skip() { say "SKIPPED: $*"; exit 3; }
fail() { say "FAILED: $*"; exit 1; }

ping() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

if [ "${1:-}" = stop ]; then
  if [ -f "$DIR/service.pid" ] && kill -0 "$(cat "$DIR/service.pid")" 2>/dev/null; then
    kill "$(cat "$DIR/service.pid")" && say "stopped"
  fi
  rm -f "$DIR/service.pid"
  exit 0
fi

started=$(date +%s)
mkdir -p "$DIR"

# 1. podman, runc (crun cannot run here: cgroups in hybrid mode) and mmdebstrap, from Debian.
missing=()
for cmd in podman runc mmdebstrap curl; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || skip "needs ${missing[*]}; installing them takes root (apt-get)"
  command -v apt-get >/dev/null 2>&1 || skip "needs ${missing[*]}; no apt-get to install them"
  say "installing ${missing[*]} from Debian (apt-get) ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null \
    || skip "apt-get update failed: no package mirror reachable"
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    podman runc mmdebstrap uidmap fuse-overlayfs curl >/dev/null \
    || skip "apt-get install podman runc mmdebstrap failed"
fi

# 2. Private configuration: the settings this kind of sandbox forces (see docs/deploy.md).
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
netns = "host"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
EOF
cat > "$DIR/env" <<EOF
DOCKER_HOST=unix://$SOCK
CONTAINERS_CONF=$CONTAINERS_CONF
CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF
STUDIO_BASE_IMAGE=$BASE_IMAGE
EOF

# 3. The base image, from this machine's Debian mirrors (no registry can be reached).
if ! podman image exists "$BASE_IMAGE"; then
  command -v mmdebstrap >/dev/null || skip "no mmdebstrap to build $BASE_IMAGE"
  say "building $BASE_IMAGE with mmdebstrap (~1 min) ..."
  mirrors=()
  while read -r line; do mirrors+=("$line"); done < <(python3 - <<'PY'
import glob, re
lines = []
for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*")]:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):  # deb822
        for block in text.split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, re.M))
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    if suite.startswith("bookworm"):
                        lines.append(f"deb {uri} {suite} {fields.get('Components', 'main')}")
    else:
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2].startswith("bookworm") \
                    and "debian" in parts[1]:
                lines.append(line.strip())
print("\n".join(dict.fromkeys(lines)) or "deb http://deb.debian.org/debian bookworm main")
PY
)
  rm -f "$DIR/rootfs.tar"
  mmdebstrap --quiet --variant=minbase bookworm "$DIR/rootfs.tar" "${mirrors[@]}" \
    || fail "mmdebstrap could not build the Debian root filesystem"
  podman import --quiet "$DIR/rootfs.tar" "$BASE_IMAGE" >/dev/null \
    || fail "podman import of the Debian root filesystem failed"
  rm -f "$DIR/rootfs.tar"
fi

# 4. Smoke check first: an unsuitable machine fails here, with podman's own words.
if ! out=$(podman run --rm --network=host "$BASE_IMAGE" echo engine-ok 2>&1) \
    || [[ "$out" != *engine-ok* ]]; then
  fail "podman cannot run a container here: $out"
fi

# 5. The Docker Engine API on a unix socket.
if ! ping; then
  rm -f "$SOCK"
  setsid podman system service --time=0 "unix://$SOCK" >"$DIR/service.log" 2>&1 &
  echo $! > "$DIR/service.pid"
  for _ in $(seq 1 60); do ping && break; sleep 0.5; done
  ping || fail "podman system service did not answer on $SOCK; see $DIR/service.log"
fi
say "ready in $(( $(date +%s) - started )) s: export DOCKER_HOST=unix://$SOCK (or source $DIR/env)"
