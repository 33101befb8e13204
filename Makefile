# Every target installs what it needs itself (scripts/setup.sh is a no-op when .venv is current).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export STUDIO_WORKSPACE ?= $(CURDIR)/Generative_Studio_Workspace

.PHONY: setup setup-production up demo test test-fast lint download-models build-flux up-with-flux web engine images

setup:
	@bash scripts/setup.sh

web: setup
	@bash scripts/setup_web.sh

# TIERS="standard" starts task workers for those tiers only (each holds its model on the GPU).
# PROFILE=production: Prefect on PostgreSQL + Redis, API replicas and services apart
# (docs/operations.md); the default is the embedded SQLite server.
PROFILE ?= embedded

up: setup web $(if $(filter production,$(PROFILE)),setup-production)
	@$(PY) -m scripts.stack --profile $(PROFILE) $(if $(TIERS),--tiers $(TIERS))

demo: setup web $(if $(filter production,$(PROFILE)),setup-production)
	@$(PY) -m scripts.stack --demo --profile $(PROFILE) $(if $(TIERS),--tiers $(TIERS))

# Debian's redis-server and postgresql-15 when missing (apt-get).
setup-production:
	@bash scripts/setup_production.sh

# The container tests' engine (podman serving the Docker API) and images are set up first;
# where that cannot be done the scripts say why and those tests skip with the reason.
test: setup web
	@$(PY) -m ruff check .
	@bash scripts/container_engine.sh || true
	@bash scripts/build_images.sh standard || true
	@$(PY) -m pytest

# The fast lane: the domain and unit tests, no servers, no browser, no canvas build.
test-fast: setup
	@$(PY) -m ruff check .
	@$(PY) -m pytest -m "not stack and not slow"

# podman from Debian, configured under .studio/engine; prints DOCKER_HOST (docs/deploy.md).
engine:
	@bash scripts/container_engine.sh

# gms-flux and gms-studio (CPU torch, local Debian base) for TIERS="low standard high".
images: setup engine
	@bash scripts/build_images.sh $(TIERS)

lint: setup
	@$(PY) -m ruff check .

download-models: setup
	@$(PY) scripts/download_models.py

# No Docker engine on the dev machines: these need one.
build-flux:
	docker compose -f docker-compose.flux.yml build

up-with-flux:
	docker compose -f docker-compose.yml -f docker-compose.flux.yml up -d
