"""Test session set-up: one Prefect server (SQLite) for the whole session, tiny FLUX models.

The Prefect settings go into os.environ before anything imports prefect, so this process and
every process a test spawns (task workers, uvicorn, flow runs) talk to the same server.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_prefect import LocalPrefectServer, free_port

pytest_plugins = ["tests.fixtures.tiny_model"]

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="studio-tests-"))
_SERVER = LocalPrefectServer(_SESSION_ROOT / "prefect", free_port(), ui=False)
os.environ.update(_SERVER.env())
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_SESSION_ROOT / "prefect-results")
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[LocalPrefectServer]:
    """The session's Prefect server, started on first use (~20 s)."""
    # A generous limit: on two cores shared by several test runs a cold start took over 120 s.
    _SERVER.start(timeout=600)
    yield _SERVER
    _SERVER.stop()


@pytest.fixture(scope="session")
def session_root() -> Path:
    return _SESSION_ROOT


# Without servers but seconds each (torch and a pipeline, subprocesses, 50 processes): not in
# `make test-fast`, which keeps the domain and unit tests under half a minute.
_SLOW_MODULE_PREFIXES = ("test_runner_flux_", "test_flux_bench", "test_cli", "test_gpus",
                         "test_docker_compose", "test_prefect_retries")
_SLOW_TESTS = {
    "test_50_concurrent_allocations_in_processes_get_50_distinct_takes",
    "test_50_concurrent_allocations_in_threads_get_50_distinct_takes",
    "test_a_process_killed_while_saving_leaves_a_manifest_that_loads",
    "test_a_batch_keeps_at_most_its_concurrency_in_flight_and_reserves_takes_in_plan_order",
    "test_metrics_are_prometheus_text_with_every_tier_even_while_prefect_is_down",
    "test_the_server_refuses_a_non_loopback_host_without_a_token",
    "test_the_command_explains_itself",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the session's Prefect server is in the `stack` lane (so
    `make test-fast` runs without servers); the Prefect-restart test disturbs the shared server,
    so it runs after everything else."""
    for item in items:
        if "prefect_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
        elif (item.path.name.startswith(_SLOW_MODULE_PREFIXES)
              or getattr(item, "originalname", item.name) in _SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: "prefect_restart" in item.nodeid)
