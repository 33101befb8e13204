"""Our one raw Prefect route (`POST /api/task_workers/filter`, no client method) goes through
Prefect's retrying transport: a transient 503 (SQLite's "database is locked") is retried, not
surfaced. An HTTP server on loopback answers 503 twice, then what Prefect would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scripts.local_prefect import free_port
from studio.tiers import Quality
from tasks.availability import connected_task_workers
from tasks.prefect_retry import retry_transient
from tasks.text_to_image import TIER_TASKS


class Flaky:
    """503 for the first `failures` calls of the task-worker route, then one worker."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def workers(self, request: Request) -> Response:
        self.calls += 1
        if self.calls <= self.failures:
            return JSONResponse({"detail": "database is locked"}, status_code=503)
        body = await request.json()
        keys = body["task_worker_filter"]["task_keys"]
        return JSONResponse([{"identifier": "host-1", "task_keys": keys,
                              "timestamp": "2026-12-01T00:00:00Z"}])

    async def missing(self, request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)


@pytest.fixture
def flaky() -> Iterator[tuple[Flaky, str]]:
    flaky = Flaky(failures=2)
    app = Starlette(routes=[
        Route("/api/task_workers/filter", flaky.workers, methods=["POST"]),
        Route("/api/{path:path}", flaky.missing, methods=["GET", "POST"]),
    ])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield flaky, f"http://127.0.0.1:{port}/api"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_transient_503_on_the_task_worker_route_is_retried_not_surfaced(
        flaky: tuple[Flaky, str]) -> None:
    server, url = flaky
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 3}):
        workers = asyncio.run(connected_task_workers([Quality.standard]))
    assert [w["identifier"] for w in workers] == ["host-1"]
    assert workers[0]["task_keys"] == [TIER_TASKS[Quality.standard].task_key]
    assert server.calls == 3  # two 503s, then the answer


def test_our_own_backoff_goes_on_where_prefects_retries_end(flaky: tuple[Flaky, str]) -> None:
    server, url = flaky
    # Prefect's client gives up at the first 503 here; tasks/prefect_retry.py does not.
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        workers = asyncio.run(connected_task_workers([Quality.standard]))
    assert [w["identifier"] for w in workers] == ["host-1"]
    assert server.calls == 3


def test_a_persistent_error_is_not_retried_forever() -> None:
    calls = []

    def refuse() -> None:
        calls.append(1)
        request = httpx.Request("POST", "http://127.0.0.1/api/task_runs/")
        raise httpx.HTTPStatusError("503", request=request,
                                    response=httpx.Response(503, request=request))

    with pytest.raises(httpx.HTTPStatusError):
        retry_transient(refuse, "a test", seconds=2)
    assert 1 < len(calls) < 10

    def broken() -> None:
        calls.clear()
        calls.append(1)
        raise ValueError("a bug, not a lock")

    with pytest.raises(ValueError):
        retry_transient(broken, "a test", seconds=30)
    assert len(calls) == 1
