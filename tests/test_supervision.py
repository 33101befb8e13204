"""Issue 16, supervision: the real `python -m scripts.stack` prints "ready" only once /readyz
says so; a task worker SIGKILLed mid-take is restarted and its take retried as the same take
(attempt 2, one file, the first Prefect run Crashed); a killed API is restarted while workers
keep rendering, and a reconnecting client gets the result; a run a worker took but dropped
before starting its take (left PENDING in Prefect) does not leave the take queued forever.

Real processes: the stack (supervisor, API, one standard task worker on the tiny model) against
the session's Prefect server. The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Pending

from api.reconcile_rules import STALLED_AFTER_SECONDS
from scripts.local_prefect import LocalPrefectServer
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.takes import record_submission
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.availability import connected_task_workers
from tasks.text_to_image import tier_task
from tests.api_helpers import add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.stack_helpers import wait_until
from tests.supervised_stack import Stack

# Each test starts, kills and waits for real processes (a worker loads torch and the model again
# after a restart: minutes on a loaded 2-core machine).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def stack(prefect_server: LocalPrefectServer, tiny_model_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert_no_worker_online()
    running = Stack(tmp_path_factory.mktemp("supervised"),
                    tiny_model_dir / "Library" / "AI_Models", prefect_server, ["standard"])
    running.start()
    yield running
    running.stop()


def run_state(task_run_id: str) -> tuple[StateType, str]:
    async def read() -> tuple[StateType, str]:
        async with get_client() as client:
            state = (await client.read_task_run(uuid.UUID(task_run_id))).state
            return state.type, state.message or ""

    return asyncio.run(read())


def worker_ids() -> set[str]:
    return {w["identifier"] for w in asyncio.run(connected_task_workers([Quality.standard]))}


def takes(http: httpx.Client, project_id: str, node_id: str) -> list[dict[str, Any]]:
    return http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()


def test_the_stack_says_ready_only_once_readyz_does(stack: Stack) -> None:
    ready_after = stack.wait_line("ready in", timeout=300)

    with stack.http() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["tiers"]["standard"]["state"] == "online"
    banner = stack.output()
    assert "standard online (1 worker)" in banner
    assert "low: not started (--tiers)" in banner
    print(f"\nstack start -> /readyz 200 and 'ready': {ready_after:.1f} s")


def test_a_worker_killed_mid_take_is_restarted_and_its_take_retried_as_the_same_take(
        stack: Stack) -> None:
    stack.wait_line("ready in", timeout=300)
    with stack.http() as http:
        project_id = new_project(http, "Killed Mid Take")
        node_id = add_t2i(http, project_id, steps=60, size=1024)  # rendering when killed
        socket = stack.socket(project_id)
        socket.click(node_id)
        first = socket.until(is_("task_progress", node_id=node_id), timeout=120,
                             what="the take to render")[-1]["payload"]
        before = worker_ids()

        stack.kill_child("worker-standard")
        killed = time.monotonic()
        got = socket.until(is_("node_state_updated", take_id=first["take_id"], attempt=2),
                           timeout=120, what="the take to be queued for attempt 2")
        retried_after = time.monotonic() - killed
        wait_until(lambda: worker_ids() - before, 180, "a new standard worker")
        back_after = time.monotonic() - killed
        got += socket.until(is_("task_success", node_id=node_id), timeout=240,
                            what="the retried take to complete")

        [take] = takes(http, project_id, node_id)
    assert (take["status"], take["number"], take["attempts"]) == ("completed", 1, 2)
    assert take["task_run_id"] != first["task_id"]  # a second run for the second attempt
    shot = stack.workspace / "Projects" / project_id / Path(take["path"]).parent
    assert [p.name for p in shot.iterdir()] == [Path(take["path"]).name]  # one file
    state, message = run_state(first["task_id"])
    assert state == StateType.CRASHED and "worker died" in message
    assert not of_type("task_failed", got)
    history = stack.children()["worker-standard"]["history"]
    assert any("restarted" in h for h in history)
    print(f"\nworker SIGKILL -> take re-queued: {retried_after:.1f} s; "
          f"-> new worker online: {back_after:.1f} s")
    socket.close()


def test_a_killed_api_is_restarted_while_the_worker_finishes_the_take(stack: Stack) -> None:
    stack.wait_line("ready in", timeout=300)
    with stack.http() as http:
        project_id = new_project(http, "API Killed")
        node_id = add_t2i(http, project_id, steps=40)
        socket = stack.socket(project_id)
        socket.click(node_id)
        socket.until(is_("task_progress", node_id=node_id), timeout=120,
                     what="the take to render")
    worker_pid = stack.pid("worker-standard")
    socket.close()

    stack.kill_child("api")
    killed = time.monotonic()

    def api_back() -> bool:
        try:
            return httpx.get(f"{stack.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(api_back, 300, "the API to be restarted")
    back_after = time.monotonic() - killed
    assert stack.pid("worker-standard") == worker_pid  # the worker was never restarted
    again = stack.socket(project_id)
    snapshot = again.quiet_for(2.0)
    with stack.http() as http:
        wait_until(lambda: takes(http, project_id, node_id)[0]["status"] == "completed", 180,
                   "the take to complete")
        [take] = takes(http, project_id, node_id)
    if any(m["payload"].get("state") in ("queued", "generating") for m in snapshot):
        # Still in flight when the client reconnected: the client is told it completed.
        again.until(is_("node_state_updated", node_id=node_id, state="completed"), timeout=60,
                    what="the reconnected client to see the take complete")
    assert take["attempts"] == 1  # rendered once, by the worker that kept running
    assert not of_type("task_failed", again.received)
    print(f"\nAPI SIGKILL -> API answering again: {back_after:.1f} s")
    log = (stack.workspace / ".studio" / "logs" / "supervisor.log").read_text()
    assert "api exited" in log and "api restarted" in log
    assert json.loads((stack.workspace / ".studio" / "stack.json").read_text())["api"][
        "restarts"] >= 1
    again.close()


def test_a_take_whose_worker_is_killed_twice_fails_with_the_reason(stack: Stack) -> None:
    stack.wait_line("ready in", timeout=300)
    wait_until(lambda: httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
               if _answers(stack.url) else False, 300, "the stack to be ready again")
    with stack.http() as http:
        project_id = new_project(http, "Killed Twice")
        node_id = add_t2i(http, project_id, steps=80, size=1024)  # rendering when killed
        socket = stack.socket(project_id)
        wait_until(worker_ids, 300, "a standard worker")
        socket.click(node_id)
        first = socket.until(is_("task_progress", node_id=node_id), timeout=120,
                             what="attempt 1 to render")[-1]["payload"]
        stack.kill_child("worker-standard")
        socket.until(is_("node_state_updated", take_id=first["take_id"], attempt=2),
                     timeout=120, what="the retry to be queued")
        second = socket.until(is_("task_progress", node_id=node_id), timeout=300,
                              what="attempt 2 to render")[-1]["payload"]
        stack.kill_child("worker-standard")
        got = socket.until(is_("task_failed", node_id=node_id), timeout=120,
                           what="the take to fail")
        [take] = takes(http, project_id, node_id)

    assert (take["status"], take["attempts"]) == ("failed", 2)
    assert "the worker stopped while rendering this take" in got[-1]["payload"]["error"]
    assert "retried once" in got[-1]["payload"]["error"]
    assert not (stack.workspace / "Projects" / project_id / take["path"]).exists()
    for run in (first["task_id"], second["task_id"]):
        assert run_state(run)[0] == StateType.CRASHED  # neither left RUNNING
    socket.close()


def pending_run() -> str:
    """A standard-tier task run left PENDING, as a worker leaves the run it took when Prefect
    goes away before the take starts (the worker's engine cannot reach the API)."""
    async def create() -> str:
        async with get_client() as client:
            run = await client.create_task_run(
                task=tier_task(Quality.standard), flow_run_id=None,
                dynamic_key=str(uuid.uuid4()), name="dropped by its worker", state=Pending())
            return str(run.id)

    return asyncio.run(create())


def test_a_take_whose_run_its_worker_took_but_never_started_is_handed_out_anew(
        stack: Stack) -> None:
    stack.wait_line("ready in", timeout=300)
    with stack.http() as http:
        wait_until(lambda: httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
                   if _answers(stack.url) else False, 300, "the stack to be ready")
        project_id = new_project(http, "Dropped Run")
        node_id = add_t2i(http, project_id, steps=4)
        socket = stack.socket(project_id)
        dropped = pending_run()
        store = ProjectStore(Workspace(stack.workspace))
        job = prepare_take(store, project_id, node_id, quality_requested=Quality.standard,
                           quality_used=Quality.standard)
        record_submission(store, project_id, node_id, job.take_id, dropped)
        left = time.monotonic()

        got = socket.until(is_("task_success", node_id=node_id), timeout=240,
                           what="the take to be handed out anew and complete")
        recovered_after = time.monotonic() - left
        [take] = takes(http, project_id, node_id)

    assert (take["status"], take["attempts"], take["hand_outs"]) == ("completed", 1, 1)
    assert take["task_run_id"] != dropped  # a new run
    assert recovered_after >= STALLED_AFTER_SECONDS  # not while the worker might start it
    state, message = run_state(dropped)
    assert state == StateType.CRASHED and "never started it" in message  # not PENDING forever
    shot = stack.workspace / "Projects" / project_id / Path(take["path"]).parent
    assert [p.name for p in shot.iterdir()] == [Path(take["path"]).name]  # one file
    assert not of_type("task_failed", got)
    print(f"\nrun left PENDING -> take completed on a new run: {recovered_after:.1f} s")
    socket.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True
