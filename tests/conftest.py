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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Prefect-restart test disturbs the shared server: it runs after everything else."""
    items.sort(key=lambda item: "prefect_restart" in item.nodeid)
