"""Issue 5 and 16, durability: Prefect keeps queued background tasks in the server's memory, so a
server restart loses the ones no worker has taken. Once a worker of the tier is online and idle
while the run is still SCHEDULED, the gateway knows Prefect lost it, hands the same task run out
again, and the take renders once, within seconds of the worker coming.

Restarting the session's Prefect server disturbs every other test: this module sorts last of
the API tests, starts its own worker only after the restart, and leaves the server up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client

from scripts.local_prefect import LocalPrefectServer
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import Quality
from tasks.submit import submit_take
from tests.api_helpers import ApiServer, add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.stack_helpers import start_tier_worker, studio_env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-restart")


@pytest.fixture(scope="module")
def api(prefect_server: LocalPrefectServer, workspace: Path) -> Iterator[ApiServer]:
    assert_no_worker_online()
    server = ApiServer(workspace, reconcile_seconds=1.0).start()
    yield server
    server.stop()


def run_count(task_run_id: str) -> int:
    async def read() -> int:
        async with get_client() as client:
            return (await client.read_task_run(uuid.UUID(task_run_id))).run_count

    return asyncio.run(read())


def test_a_take_queued_when_prefect_restarts_is_handed_out_again_and_renders_once(
        api: ApiServer, prefect_server: LocalPrefectServer, workspace: Path,
        tiny_model_dir: Path, tmp_path: Path) -> None:
    with api.client() as http:
        project_id = new_project(http, "Restart", quality="low")
        node_id = add_t2i(http, project_id)
    store = ProjectStore(api.settings.workspace)
    # Queued the way the dispatcher does it; no `low` worker is connected to take it.
    job = prepare_take(store, project_id, node_id, quality_requested=Quality.low,
                       quality_used=Quality.low)
    task_run_id = submit_take(job)
    with store.edit(project_id) as project:
        project.get_node(node_id).get_take(job.take_id).task_run_id = task_run_id
    socket = api.socket(project_id)
    assert socket.next()["payload"] == {"node_id": node_id, "state": "queued", "take_id": None,
                                        "task_id": None, "queue": None, "attempt": None}

    prefect_server.restart()  # the server's queue of background tasks is gone

    # No worker of the tier: the take waits, nothing is handed out again or failed.
    assert not of_type("task_failed", socket.quiet_for(5.0))
    with api.client() as http:
        [take] = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert (take["status"], take["hand_outs"], take["task_run_id"]) == ("queued", 0, task_run_id)

    worker = start_tier_worker(
        Quality.low, studio_env(workspace, tiny_model_dir / "Library" / "AI_Models"),
        tmp_path / "worker-low.log")
    online = time.monotonic()
    try:
        got = socket.until(is_("node_state_updated", node_id=node_id, state="completed"),
                           timeout=90, what="the lost take to complete")
    finally:
        worker.kill()
    rendered_after = time.monotonic() - online
    print(f"worker online -> lost take rendered: {rendered_after:.1f} s")

    with api.client() as http:
        [take] = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert (take["status"], take["attempts"]) == ("completed", 1)
    assert take["hand_outs"] >= 1  # handed out again (more than once only on a slow machine)
    [success] = of_type("task_success", got)
    assert success["task_id"] == task_run_id  # the same task run, not a second one
    assert (workspace / "Projects" / project_id / success["result"]["output_path"]).is_file()
    assert run_count(task_run_id) == 1
    socket.close()
    assert httpx.get(f"{prefect_server.api_url}/health").status_code == 200
