#!/usr/bin/env bash
# Builds the canvas (web/dist, served by the API at /) and makes sure the browser the end-to-end
# tests drive (Debian's chromium) is there. Fast when nothing changed:
#   npm ci         only when web/node_modules does not match web/package-lock.json
#   npm run build  only when a source is newer than web/dist
# `setup_web.sh deps` stops after npm ci (the tests that run the canvas's own tools need no build).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "setup_web: $*" >&2
  exit 1
}

command -v npm >/dev/null || die "npm is missing: install Node.js 20.19+ (with npm), then rerun."

# --- dependencies ---
stamp=web/node_modules/.studio-lock-sha
want=$(sha256sum web/package-lock.json | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup_web: npm ci"
  (cd web && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = deps ]; then exit 0; fi

# --- build ---
built=web/dist/index.html
if [ ! -f "$built" ] || [ -n "$(find web/src web/index.html web/vite.config.ts web/package-lock.json \
  -newer "$built" -print -quit)" ]; then
  echo "setup_web: building the canvas"
  (cd web && npm run --silent build -- --logLevel warn)
fi

# --- the tests' browser ---
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup_web: installing Debian's chromium (for the end-to-end tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    die "/usr/bin/chromium is missing and this is not a root Debian shell: run
  sudo apt-get install -y chromium
then rerun. (The end-to-end tests drive it; Playwright's own browser download is not used.)"
  fi
fi
