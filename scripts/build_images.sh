#!/usr/bin/env bash
# Builds the studio's images with the local container engine (scripts/container_engine.sh):
#   gms-flux:<version>-<tier>    the runner (STUDIO_RUNNER_MODE=docker, one take per container)
#   gms-studio:<version>-<tier>  the flow-run image of the GPU work pools
#
#   bash scripts/build_images.sh [low|standard|high ...]    (default: every tier)
#
# Local/CI flavour: the Debian base made by container_engine.sh, CPU torch, and every Python
# package from docker/wheelhouse (made here by the host's pip: the build needs no index).
# On a GPU host build the production flavour with plain `docker build` (docs/deploy.md).
# Exit codes as container_engine.sh: 3 skipped (reason printed), 1 failed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DIR=${STUDIO_ENGINE_DIR:-$REPO/.studio/engine}
PY=${PYTHON:-$REPO/.venv/bin/python}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -f "$DIR/env" ] || { echo "build images: SKIPPED: no engine (run scripts/container_engine.sh)"; exit 3; }
set -a; . "$DIR/env"; set +a

tiers=("$@")
[ ${#tiers[@]} -gt 0 ] || tiers=(low standard high)
started=$(date +%s)

# 1. The wheelhouse: the runner's requirements with CPU torch, and the project's dependencies.
WH=docker/wheelhouse
stamp=$(cat pyproject.toml runners/flux/requirements.txt "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$WH/.stamp" 2>/dev/null)" != "$stamp-$TORCH_SPEC" ]; then
  echo "build images: filling $WH (pip wheel) ..."
  # The production list names a CUDA index and CUDA-only extras: here, the CPU torch instead.
  { echo "$TORCH_SPEC"
    grep -v -E '^\s*(--|torch|torchao)' runners/flux/requirements.txt; } > "$WH/runner-requirements.txt"
  "$PY" - > "$WH/studio-requirements.txt" <<'PY'
import tomllib
data = tomllib.load(open("pyproject.toml", "rb"))
deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["runner"]
print("\n".join([*deps, *data["build-system"]["requires"], "wheel"]))
PY
  "$PY" -m pip wheel --quiet --wheel-dir "$WH" "$TORCH_SPEC" -r "$WH/runner-requirements.txt" \
    -r "$WH/studio-requirements.txt"
  # Exact pins of the whole closed set: the image installs it without resolving (fast).
  ls "$WH"/*.whl | sed -E 's#.*/##; s/^([^-]+)-([^-]+)-.*/\1==\2/' > "$WH/studio-lock.txt"
  echo "$stamp-$TORCH_SPEC" > "$WH/.stamp"
fi
# Extra CA certificates of this machine (TLS re-signed by a proxy) go into the images' trust.
cp -f /usr/local/share/ca-certificates/*.crt docker/ca-certificates/ 2>/dev/null || true

version() {  # gms-flux:1.0-standard -> 1.0-standard
  "$PY" -c "from studio.tiers import TIERS, Quality; print(TIERS[Quality('$1')].image.split(':')[1])"
}

# What the images are built from: an image labelled with the same hash is current (a cached
# rebuild still hashes the 300 MB context: minutes on a busy machine).
source_hash=$( { cat runners/flux/Dockerfile "$WH/studio-lock.txt" "$WH/.stamp" pyproject.toml \
  prefect.yaml; find studio cli runners tasks flows api deployments -name '*.py' -print0 \
  | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)

build() {  # target tier tag
  if [ "$(podman image inspect --format '{{ index .Config.Labels "studio.source" }}' "$3" \
        2>/dev/null)" = "$source_hash" ]; then
    echo "build images: $3 is current"
    return
  fi
  podman build --quiet --network=host --layers --label "studio.source=$source_hash" \
    -f runners/flux/Dockerfile --ignorefile runners/flux/Dockerfile.dockerignore \
    --build-arg BASE_IMAGE="$STUDIO_BASE_IMAGE" \
    --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheelhouse" \
    --build-arg RUNNER_REQUIREMENTS="$WH/runner-requirements.txt" \
    --build-arg STUDIO_LOCK=/wheelhouse/studio-lock.txt \
    --build-arg QUALITY="$2" \
    --target "$1" -t "$3" . >/dev/null
  echo "build images: $3 ($(podman image inspect --format '{{.Size}}' "$3" | awk '{printf "%.0f MB", $1/1e6}'))"
}

for tier in "${tiers[@]}"; do
  tag=$(version "$tier")
  build runner "$tier" "gms-flux:$tag"
  build studio "$tier" "gms-studio:$tag"
done
echo "build images: done in $(( $(date +%s) - started )) s"
