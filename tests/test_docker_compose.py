"""docker-compose.yml describes the production profile as containers; `docker-compose config`
(Debian's docker-compose, installed when missing) validates it. No engine is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack_helpers import REPO


def compose() -> str:
    if shutil.which("docker-compose") is None:
        subprocess.run(["bash", "scripts/setup_production.sh", "--with-compose"], cwd=REPO,
                       check=False, timeout=600)
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("docker-compose is not installed and `apt-get install docker-compose` "
                    "failed (no root or no Debian mirror?)")
    return found


def config(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_")}
    full.update(env)
    return subprocess.run([compose(), "-f", str(REPO / "docker-compose.yml"), *args, "config"],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=120)


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "db-password").write_text("s3cret-from-a-file\n")
    (tmp_path / "api-token").write_text("token-from-a-file\n")
    return {"STUDIO_WORKSPACE": str(tmp_path / "ws"),
            "STUDIO_DB_PASSWORD_FILE": str(tmp_path / "db-password"),
            "STUDIO_API_TOKEN_FILE": str(tmp_path / "api-token")}


def test_compose_validates_with_the_production_topology(tmp_path: Path,
                                                        secrets: dict[str, str]) -> None:
    done = config(tmp_path, "--profile", "gpu0", **secrets)
    assert done.returncode == 0, done.stderr
    spec: dict[str, Any] = yaml.safe_load(done.stdout)
    services = spec["services"]
    assert {"postgres", "redis", "migrate", "prefect-api", "prefect-ui", "prefect-services",
            "studio-api", "task-worker-gpu0", "pool-worker-gpu0"} <= set(services)
    assert services["migrate"]["command"] == ["prefect", "server", "database", "upgrade", "-y"]
    for name in ("prefect-api", "prefect-ui"):
        assert "--no-services" in services[name]["command"]
        assert services[name]["depends_on"]  # never before the migration / the task replica
    assert services["prefect-services"]["command"][-2:] == ["services", "start"]
    assert services["prefect-ui"]["environment"]["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] == \
        "false"
    # The per-process task queue: the studio API and the task workers name the same replica.
    task_api = services["studio-api"]["environment"]["PREFECT_API_URL"]
    assert task_api == "http://prefect-api:4200/api"
    assert services["task-worker-gpu0"]["environment"]["PREFECT_API_URL"] == task_api
    env = services["prefect-api"]["environment"]
    assert env["PREFECT_SERVER_EVENTS_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert env["PREFECT_SERVER_DOCKET_URL"].startswith("redis://redis:6379/")
    assert env["PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE"] == "1"
    gpu = services["task-worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["device_ids"] == ["0"]


def test_no_secret_is_in_the_compose_file_only_files_named_by_the_environment(
        tmp_path: Path, secrets: dict[str, str]) -> None:
    done = config(tmp_path, **secrets)
    assert done.returncode == 0, done.stderr
    assert "s3cret-from-a-file" not in done.stdout and "token-from-a-file" not in done.stdout
    spec = yaml.safe_load(done.stdout)
    assert spec["secrets"]["db_password"]["file"] == secrets["STUDIO_DB_PASSWORD_FILE"]
    assert spec["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == \
        "/run/secrets/db_password"
    for name, service in spec["services"].items():
        for key in service.get("environment") or {}:
            if "PASSWORD" in key or "TOKEN" in key:
                assert key.endswith("_FILE"), f"{name} sets {key} in the compose file"


def test_compose_refuses_to_start_without_the_secret_files(tmp_path: Path) -> None:
    done = config(tmp_path, STUDIO_WORKSPACE=str(tmp_path))
    assert done.returncode != 0
    assert "STUDIO_DB_PASSWORD_FILE" in done.stderr


def test_prefect_metrics_are_on_for_servers_and_workers_and_one_switch_turns_them_off(
        tmp_path: Path, secrets: dict[str, str]) -> None:
    def metrics(**env: str) -> dict[str, dict[str, str]]:
        done = config(tmp_path, "--profile", "gpu0", **secrets, **env)
        assert done.returncode == 0, done.stderr
        services = yaml.safe_load(done.stdout)["services"]
        return {name: services[name]["environment"] for name in
                ("prefect-api", "prefect-ui", "prefect-services", "task-worker-gpu0",
                 "pool-worker-gpu0")}

    on = metrics()
    for server in ("prefect-api", "prefect-ui", "prefect-services"):
        assert on[server]["PREFECT_SERVER_METRICS_ENABLED"] == "true"  # GET /api/metrics
    for worker in ("task-worker-gpu0", "pool-worker-gpu0"):
        assert on[worker]["PREFECT_CLIENT_METRICS_ENABLED"] == "true"
        assert on[worker]["PREFECT_CLIENT_METRICS_PORT"] == "4201"
    off = metrics(STUDIO_PREFECT_METRICS="false")
    assert {env.get("PREFECT_SERVER_METRICS_ENABLED", env.get("PREFECT_CLIENT_METRICS_ENABLED"))
            for env in off.values()} == {"false"}
