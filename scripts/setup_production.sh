#!/usr/bin/env bash
# What the production profile needs beyond .venv: Debian's redis-server (Redis 7.0; prefect-redis
# needs >= 6.2) and PostgreSQL 15 (`postgresql-15`, usually already on the machine image).
# Installed with apt-get when missing; a no-op otherwise. Needs root (or sudo) to install.
set -euo pipefail
PG_BIN=${STUDIO_PG_BIN:-/usr/lib/postgresql/15/bin}
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x "$PG_BIN/postgres" ] || missing+=(postgresql-15)
[ "${1:-}" = "--with-compose" ] && ! command -v docker-compose >/dev/null && missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup-production: installing ${missing[*]} (Debian packages) ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
