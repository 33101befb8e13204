"""Issue 5, what a user of the canvas sees: a Generate click over the WebSocket, rendered by a
warm task worker on the tiny model, relayed live from Prefect's events.

Everything is real: the session's Prefect server, one `studio worker --tier standard` process,
the API under uvicorn, a `websockets` client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.local_prefect import LocalPrefectServer
from studio.manifest import Asset, Edge, new_id, new_node
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tests.api_helpers import ApiServer, add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.stack_helpers import Proc, start_tier_worker, studio_env, wait_until


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-workspace")


@pytest.fixture(scope="module")
def standard_worker(prefect_server: LocalPrefectServer, workspace: Path, tiny_model_dir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    assert_no_worker_online()
    env = studio_env(workspace, tiny_model_dir / "Library" / "AI_Models")
    proc = start_tier_worker(Quality.standard, env,
                             tmp_path_factory.mktemp("logs") / "worker-standard.log")
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def api(standard_worker: Proc, workspace: Path) -> Iterator[ApiServer]:
    server = ApiServer(workspace).start()
    yield server
    server.stop()


@pytest.fixture
def http(api: ApiServer) -> Iterator:
    with api.client() as client:
        yield client


def project_path(workspace: Path, project_id: str, rel: str) -> Path:
    return workspace / "Projects" / project_id / rel


def test_a_click_renders_a_take_and_the_client_follows_it_live(api: ApiServer, http,
                                                               workspace: Path) -> None:
    project_id = new_project(http, "Live Take")
    node_id = add_t2i(http, project_id)
    socket = api.socket(project_id)

    socket.click(node_id)
    got = socket.until(is_("node_state_updated", node_id=node_id, state="completed"),
                       what="the node to be completed")

    first = got[0]
    assert first["type"] == "server:node_state_updated"
    assert first["payload"]["state"] in ("queued", "generating")  # at once, before the render
    states = [p["state"] for p in of_type("node_state_updated", got)]
    assert "generating" in states
    progress = [p["progress"] for p in of_type("task_progress", got)]
    assert progress and progress == sorted(progress)  # rising
    [success] = of_type("task_success", got)
    assert [m["type"] for m in got].index("server:task_success") > max(
        i for i, m in enumerate(got) if m["type"] == "server:task_progress")
    output = success["result"]["output_path"]
    assert project_path(workspace, project_id, output).is_file()
    assert success["result"]["take_number"] == 1
    assert {p["task_id"] for p in of_type("task_progress", got)} == {success["task_id"]}

    takes = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert [(t["id"], t["status"], t["path"], t["task_run_id"]) for t in takes] == [
        (success["result"]["take_id"], "completed", output, success["task_id"])]
    image = http.get(takes[0]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert http.get(f"/api/projects/{project_id}/nodes/{node_id}").json()["state"] == "completed"
    socket.close()


def test_a_failing_run_reports_the_runners_message_and_the_node_turns_to_error(
        api: ApiServer, http) -> None:
    project_id = new_project(http, "Missing LoRA")
    node_id = add_t2i(http, project_id)
    store = ProjectStore(api.settings.workspace)
    with store.edit(project_id) as project:  # a character whose LoRA file is not there
        asset = Asset(id=str(uuid.uuid4()), kind="character", name="Alex",
                      lora_path="Library/LoRAs/alex-missing.safetensors")
        character = new_node("character", params={"asset_id": asset.id})
        project.assets.append(asset)
        project.nodes.append(character)
        project.edges.append(Edge(id=new_id(), source=character.id, source_socket="asset",
                                  target=node_id, target_socket="character"))
    socket = api.socket(project_id)

    socket.click(node_id)
    got = socket.until(is_("node_state_updated", node_id=node_id, state="error"),
                       what="the node to turn to error")

    [failed] = of_type("task_failed", got)
    assert "alex-missing.safetensors" in failed["error"]
    assert failed["task_id"] and failed["node_id"] == node_id
    assert not of_type("task_success", got)
    takes = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert [t["status"] for t in takes] == ["failed"]
    socket.close()


def test_high_quality_with_only_a_standard_worker_falls_back_and_says_so(api: ApiServer,
                                                                         http) -> None:
    project_id = new_project(http, "Wants High", quality="high")
    # The default policy (when_offline) falls back once high has been offline 30 s; this
    # project allows it at once.
    assert http.patch(f"/api/projects/{project_id}",
                      json={"fallback_grace_seconds": 0}).json()["fallback"] == "when_offline"
    node_id = add_t2i(http, project_id)
    socket = api.socket(project_id)

    socket.click(node_id)
    got = socket.until(is_("task_success", node_id=node_id), what="the take's success")

    [fallback] = of_type("quality_fallback", got)
    assert (fallback["node_id"], fallback["requested"], fallback["used"]) == (
        node_id, "high", "standard")
    assert fallback["reason"].startswith("no task worker has been online for quality high")
    [take] = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert (take["quality_requested"], take["quality_used"]) == ("high", "standard")
    socket.close()


def test_twenty_clicks_at_once_make_twenty_takes_each_reported_once(api: ApiServer,
                                                                    http) -> None:
    project_id = new_project(http, "Twenty Clicks")
    node_id = add_t2i(http, project_id, steps=1)
    socket = api.socket(project_id)

    for _ in range(20):
        socket.click(node_id)
    successes: list[dict] = []

    def twenty(message: dict) -> bool:
        if message["type"] == "server:task_success":
            successes.append(message["payload"])
        return len(successes) == 20

    got = socket.until(twenty, timeout=180, what="twenty successes")
    got += socket.quiet_for(1.5)  # nothing is delivered twice, even late

    successes = of_type("task_success", got)
    assert len(successes) == 20
    assert len({s["task_id"] for s in successes}) == 20
    assert len({s["result"]["take_id"] for s in successes}) == 20
    assert sorted(s["result"]["take_number"] for s in successes) == list(range(1, 21))
    assert not of_type("task_failed", got) and not of_type("error", got)
    takes = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert [t["status"] for t in takes] == ["completed"] * 20
    assert of_type("node_state_updated", got)[-1]["state"] == "completed"
    socket.close()


def test_a_client_reconnecting_mid_run_gets_the_state_in_flight_then_the_result(
        api: ApiServer, http) -> None:
    project_id = new_project(http, "Reconnect")
    node_id = add_t2i(http, project_id, steps=2)
    first = api.socket(project_id)
    for _ in range(4):  # a queue of takes, so some are still in flight after the reconnect
        first.click(node_id)
    first.until(is_("task_progress", node_id=node_id), what="the first progress")
    first.close()

    again = api.socket(project_id)
    snapshot = again.next(timeout=10)
    assert snapshot["type"] == "server:node_state_updated"
    assert snapshot["payload"]["node_id"] == node_id
    assert snapshot["payload"]["state"] in ("queued", "generating")
    again.until(is_("node_state_updated", node_id=node_id, state="completed"), timeout=90,
                what="the node to complete after the reconnect")
    assert of_type("task_success", again.received)
    takes = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    assert [t["status"] for t in takes] == ["completed"] * 4  # none lost while away
    again.close()


def test_a_second_api_process_relays_the_takes_started_through_the_first(
        api: ApiServer, http, workspace: Path) -> None:
    other = ApiServer(workspace).start()
    try:
        project_id = new_project(http, "Two Gateways")
        node_id = add_t2i(http, project_id)
        watcher = other.socket(project_id)
        clicker = api.socket(project_id)

        clicker.click(node_id)
        mine = clicker.until(is_("task_success", node_id=node_id), what="success on the first")
        theirs = watcher.until(is_("task_success", node_id=node_id), what="success on the second")

        assert of_type("task_success", theirs) == of_type("task_success", mine)
        assert "queued" in [p["state"] for p in of_type("node_state_updated", theirs)]
        clicker.close()
        watcher.close()
    finally:
        other.stop()


def test_a_take_that_ends_with_no_client_connected_is_still_recorded(api: ApiServer,
                                                                     http) -> None:
    project_id = new_project(http, "Nobody Watching")
    node_id = add_t2i(http, project_id)
    socket = api.socket(project_id)
    socket.click(node_id)
    socket.until(is_("node_state_updated", node_id=node_id), what="the click's state")
    socket.close()

    store = ProjectStore(Workspace(api.settings.workspace.root))
    wait_until(lambda: store.load(project_id).get_node(node_id).active_take, 60,
               "the take to complete with nobody connected")
    assert http.get(f"/api/projects/{project_id}/nodes/{node_id}").json()["state"] == "completed"
