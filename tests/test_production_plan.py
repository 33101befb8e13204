"""The production profile's plan, without starting anything: which process talks to which
Prefect replica, where state and secrets live, and what an operator is told when a part is
missing. (tests/test_production.py starts it for real.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import scripts.production as production
from scripts.production import ProductionError, ProductionPrefect
from scripts.stack import make_plan, parse_args


def test_make_up_production_points_the_studio_at_the_task_replica_and_the_ui_at_the_other(
        tmp_path: Path) -> None:
    plan = make_plan(parse_args(["--profile", "production", "--prefect-port", "4300"]),
                     {"STUDIO_WORKSPACE": str(tmp_path)})
    prefect = plan.prefect_server()
    assert isinstance(prefect, ProductionPrefect)
    assert prefect is plan.prefect_server()  # one set of processes per plan
    assert plan.env["PREFECT_API_URL"] == plan.env["STUDIO_TASK_API_URL"] == \
        "http://127.0.0.1:4301/api"
    assert plan.env["STUDIO_PREFECT_UI_API_URL"] == "http://127.0.0.1:4300/api"
    assert prefect.ui_url == "http://127.0.0.1:4300"
    assert prefect.state_dir == tmp_path / ".studio" / "production"


def test_the_default_profile_stays_embedded(tmp_path: Path) -> None:
    plan = make_plan(parse_args([]), {"STUDIO_WORKSPACE": str(tmp_path)})
    assert plan.profile == "embedded"
    assert plan.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("sqlite+aiosqlite://")


def test_the_servers_use_postgres_redis_and_unbatched_event_publishing(tmp_path: Path) -> None:
    env = ProductionPrefect(tmp_path, pg_port=5999, redis_port=6999).server_env()
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:")
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("@127.0.0.1:5999/prefect")
    assert env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"
    for key in ("PREFECT_SERVER_EVENTS_MESSAGING_BROKER", "PREFECT_SERVER_EVENTS_MESSAGING_CACHE"):
        assert env[key] == "prefect_redis.messaging"
    assert env["PREFECT_SERVER_EVENTS_CAUSAL_ORDERING"] == "prefect_redis.ordering"
    assert env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert env["PREFECT_SERVER_DOCKET_URL"] == "redis://127.0.0.1:6999/1"
    assert env["PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE"] == "1"


def test_the_database_password_is_generated_once_private_or_taken_from_env_or_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDIO_DB_PASSWORD", raising=False)
    monkeypatch.delenv("STUDIO_DB_PASSWORD_FILE", raising=False)
    prefect = ProductionPrefect(tmp_path / "state")
    first = prefect.db_password()
    assert first == prefect.db_password()
    secret = tmp_path / "state" / "secrets" / "db-password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.setenv("STUDIO_DB_PASSWORD_FILE", str(tmp_path / "pw"))
    assert prefect.db_password() == "from-a-file"
    monkeypatch.setenv("STUDIO_DB_PASSWORD", "from-the-env")
    assert prefect.db_password() == "from-the-env"


def test_a_missing_postgres_is_named_with_its_package(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(production, "PG_BIN", tmp_path / "nowhere")
    with pytest.raises(ProductionError, match="apt-get install postgresql-15"):
        ProductionPrefect(tmp_path / "state").start(timeout=5)


def test_a_missing_redis_is_named_with_its_package(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(production.shutil, "which", lambda name: None)
    with pytest.raises(ProductionError, match="apt-get install redis-server"):
        ProductionPrefect(tmp_path / "state").check_installed()
