"""Issue 16, what an artist sees when no worker is free: a click is never refused for want of
one; the take waits in its tier's queue, the node says why and where, places go down as takes
ahead finish, and a take can be cancelled while queued or generating.

Real processes: the session's Prefect server, the API under uvicorn, `studio worker --tier
standard` started *after* the first click, a websockets client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.schemas.objects import StateType

from scripts.local_prefect import LocalPrefectServer
from studio.tiers import Quality
from tests.api_helpers import ApiServer, add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.restart_helpers import run_state, takes
from tests.stack_helpers import Proc, start_tier_worker, studio_env, wait_until


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-queue")


@pytest.fixture(scope="module")
def api(prefect_server: LocalPrefectServer, workspace: Path) -> Iterator[ApiServer]:
    assert_no_worker_online()
    server = ApiServer(workspace, reconcile_seconds=1.0).start()
    yield server
    server.stop()


class Workers:
    """The module's standard worker, started by the first test (after its click)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log, self.proc = env, log, None

    def start(self) -> Proc:
        if self.proc is None:
            self.proc = start_tier_worker(Quality.standard, self.env, self.log)
        return self.proc


@pytest.fixture(scope="module")
def workers(workspace: Path, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    holder = Workers(studio_env(workspace, tiny_model_dir / "Library" / "AI_Models"),
                     tmp_path_factory.mktemp("logs") / "worker-standard.log")
    yield holder
    if holder.proc is not None:
        holder.proc.kill()


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def test_a_click_before_any_worker_is_queued_with_a_reason_and_renders_when_one_comes(
        api: ApiServer, http: httpx.Client, workers: Workers, workspace: Path) -> None:
    project_id = new_project(http, "Before The Worker")
    node_id = add_t2i(http, project_id)
    socket = api.socket(project_id)
    assert http.get("/readyz").status_code == 503

    socket.click(node_id)
    first = socket.until(is_("node_state_updated", node_id=node_id), timeout=20,
                         what="the click's state")[-1]["payload"]

    assert first["state"] == "queued"
    assert first["queue"]["tier"] == "standard" and first["queue"]["position"] == 1
    assert first["queue"]["reason"].startswith("waiting for a standard GPU worker")
    health = http.get("/healthz").json()
    assert health["tiers"]["standard"]["state"] == "offline"
    assert health["tiers"]["standard"]["queued"] == 1

    workers.start()
    got = socket.until(is_("task_success", node_id=node_id), timeout=120,
                       what="the queued take to render once the worker came")

    assert not of_type("task_failed", got)
    [take] = takes(http, project_id, node_id)
    assert take["status"] == "completed"
    assert (workspace / "Projects" / project_id / take["path"]).is_file()
    # Readiness follows the tier poll (every second), which may not have run since the take.
    wait_until(lambda: http.get("/readyz").status_code == 200, 30, "/readyz to turn 200")
    tier = http.get("/healthz").json()["tiers"]["standard"]
    assert (tier["state"], tier["workers"]) == ("online", 1)
    socket.close()


def test_five_clicks_behind_a_busy_worker_see_their_places_go_down_and_render_in_order(
        api: ApiServer, http: httpx.Client, workers: Workers) -> None:
    workers.start()
    project_id = new_project(http, "Five Behind")
    busy = add_t2i(http, project_id, steps=40, size=1024, prompt="keeps the worker busy")
    node_id = add_t2i(http, project_id, steps=1)
    socket = api.socket(project_id)
    socket.click(busy)
    socket.until(is_("task_progress", node_id=busy), timeout=60, what="the busy take to run")

    for _ in range(5):
        socket.click(node_id)
    done: list[dict[str, Any]] = []

    def fifth_success(message: dict[str, Any]) -> bool:
        if is_("task_success", node_id=node_id)(message):
            done.append(message)
        return len(done) == 5

    got = socket.until(fifth_success, timeout=240, what="five successes")

    places: dict[str, list[int]] = {}
    for state in of_type("node_state_updated", got):
        if state["node_id"] == node_id and state.get("queue"):
            places.setdefault(state["take_id"], []).append(state["queue"]["position"])
    five = sorted(takes(http, project_id, node_id), key=lambda t: t["number"])
    assert [t["status"] for t in five] == ["completed"] * 5
    # Each click's first place is 1..5 in click order, and a place only ever goes down.
    assert [places[t["id"]][0] for t in five] == [1, 2, 3, 4, 5]
    assert all(p == sorted(p, reverse=True) for p in places.values())
    assert any(len(p) > 1 for p in places.values())  # updated as the takes ahead finished
    finished = [s["result"]["take_number"] for s in of_type("task_success", got)
                if s["node_id"] == node_id]
    assert finished == [1, 2, 3, 4, 5]
    socket.close()


def test_a_take_cancelled_while_queued_leaves_the_queue_and_its_run_is_cancelled(
        api: ApiServer, http: httpx.Client, workers: Workers, workspace: Path) -> None:
    workers.start()
    project_id = new_project(http, "Cancel Queued")
    busy = add_t2i(http, project_id, steps=100, size=512)  # renders while the other waits
    node_id = add_t2i(http, project_id, steps=1)
    socket = api.socket(project_id)
    socket.click(busy)
    socket.until(is_("task_progress", node_id=busy), timeout=60, what="the busy take to run")
    socket.click(node_id)
    queued = socket.until(is_("node_state_updated", node_id=node_id, state="queued"),
                          timeout=20, what="the take to queue")[-1]["payload"]

    socket.send({"type": "client:cancel_generation", "payload": {"take_id": queued["take_id"]}})
    got = socket.until(is_("task_cancelled", take_id=queued["take_id"]), timeout=20,
                       what="the cancel")
    socket.until(is_("task_success", node_id=busy), timeout=120, what="the busy take")
    socket.quiet_for(2.0)  # the cancelled run, if Prefect still hands it out, is skipped

    [take] = takes(http, project_id, node_id)
    assert take["status"] == "cancelled"
    assert not (workspace / "Projects" / project_id / take["path"]).exists()
    # Prefect records task-run states from the workers' events: the skipped copy's own
    # Pending and Cancelled can land a moment after the quiet time.
    wait_until(lambda: run_state(take["task_run_id"]) == StateType.CANCELLED, 30,
               "the cancelled take's run to read Cancelled in Prefect")
    assert not of_type("task_failed", got)

    socket.click(node_id)  # the next click works
    socket.until(is_("task_success", node_id=node_id), timeout=120, what="the next click")
    socket.close()


def test_a_take_cancelled_while_generating_stops_writes_no_file_and_its_run_is_cancelled(
        api: ApiServer, http: httpx.Client, workers: Workers, workspace: Path) -> None:
    workers.start()
    project_id = new_project(http, "Cancel Generating")
    # 256x256 at 60 steps renders in about a second on an idle machine: too soon to stop.
    node_id = add_t2i(http, project_id, steps=100, size=1024)
    socket = api.socket(project_id)
    socket.click(node_id)
    progress = socket.until(is_("task_progress", node_id=node_id), timeout=60,
                            what="the take to render")[-1]["payload"]

    response = http.delete(f"/api/projects/{project_id}/nodes/{node_id}/takes/"
                           f"{progress['take_id']}")
    assert response.status_code == 200, response.text
    got = socket.until(is_("task_cancelled", take_id=progress["take_id"]), timeout=60,
                       what="the render to stop")
    got += socket.quiet_for(1.0)

    [take] = takes(http, project_id, node_id)
    assert take["status"] == "cancelled"
    assert not (workspace / "Projects" / project_id / take["path"]).exists()
    wait_until(lambda: run_state(take["task_run_id"]) == StateType.CANCELLED, 20,
               "the Prefect run to show Cancelled")
    kinds = [m["type"] for m in got]
    assert "server:task_progress" not in kinds[kinds.index("server:task_cancelled"):]
    assert http.delete(f"/api/projects/{project_id}/nodes/{node_id}/takes/"
                       f"{take['id']}").status_code == 409  # it has ended

    http.patch(f"/api/projects/{project_id}/nodes/{node_id}", json={"params": {"steps": 1}})
    socket.click(node_id)
    socket.until(is_("task_success", node_id=node_id), timeout=120, what="the next click")
    socket.close()
