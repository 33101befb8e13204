"""Issue 11, the production profile started for real: PostgreSQL and Redis processes, two
Prefect API replicas (`--no-services`) and `prefect server services start`, a warm task worker,
two studio API processes, the `local` pool with its worker. Started once for the module.

The studio API and the task worker use the task replica; the pool worker and its flow runs use
the UI replica: every event crosses replicas through Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.production import ProductionPrefect
from studio.tiers import Quality
from tests.api_helpers import Socket, is_, of_type
from tests.stack_helpers import REPO, wait_until
from tests.studio_stack import Studio, shared_tmp

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def studio(tiny_model_dir: Path) -> Iterator[Studio]:
    subprocess.run(["bash", "scripts/setup_production.sh"], cwd=REPO, check=True, timeout=600)
    stack = Studio(shared_tmp("studio-production-"), tiny_model_dir / "Library" / "AI_Models",
                   "production")
    try:
        stack.start_prefect()
        stack.start_worker(Quality.standard)
        stack.start_api("api-1")
        stack.start_api("api-2")
        stack.deploy_local_pool()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(stack.workspace, ignore_errors=True)  # the logs stay, for a failure


def api(studio: Studio, name: str) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{studio.api_ports[name]}", timeout=30)


def socket(studio: Studio, name: str, project_id: str) -> Socket:
    return Socket(f"ws://127.0.0.1:{studio.api_ports[name]}/ws/{project_id}")


def new_project(http: httpx.Client, name: str, nodes: int, steps: int = 1) -> tuple[str, list[str]]:
    project = http.post("/api/projects", json={"name": name, "quality": "standard"})
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    node_ids = []
    for i in range(nodes):
        node = http.post(f"/api/projects/{project_id}/nodes", json={
            "node_type": "text_to_image",
            "shot": {"scene": "SCENE_01", "shot": f"SHOT_{10 * (i + 1):03d}", "version": "v01"},
            "params": {"prompt": f"a fox {i}", "steps": steps, "seed": i, "preset": "custom",
                       "width": 256, "height": 256}})
        assert node.status_code == 201, node.text
        node_ids.append(node.json()["id"])
    return project_id, node_ids


def takes(http: httpx.Client, project_id: str, node_id: str) -> list[dict]:
    return http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()


def test_the_profile_runs_postgres_redis_two_api_replicas_and_the_services_apart(
        studio: Studio) -> None:
    prefect: ProductionPrefect = studio.prefect
    assert {"postgres", "redis", "prefect-api", "prefect-ui", "prefect-services"} <= set(
        prefect.children)
    assert all(child.alive() for child in prefect.children.values())
    assert prefect.server_env()["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://")
    for url in (prefect.api_url, prefect.ui_api_url):
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
    assert prefect.pg_data.is_relative_to(studio.workspace / ".studio")
    # The studio's processes name the task replica; the UI is the other one.
    assert studio.env()["PREFECT_API_URL"] == studio.env()["STUDIO_TASK_API_URL"] == prefect.api_url
    assert prefect.ui_api_url != prefect.api_url


def test_a_click_renders_and_a_client_of_the_second_studio_api_sees_it(studio: Studio) -> None:
    with api(studio, "api-1") as http:
        project_id, [node_id] = new_project(http, "Prod Click", 1, steps=2)
    watcher = socket(studio, "api-2", project_id)
    clicker = socket(studio, "api-1", project_id)

    clicker.click(node_id)
    got = clicker.until(is_("task_success", node_id=node_id), timeout=120, what="the success")
    seen = watcher.until(is_("task_success", node_id=node_id), timeout=60,
                         what="the success on the second API")

    [success] = of_type("task_success", got)
    assert of_type("task_success", seen) == [success]
    assert of_type("task_progress", seen)  # progress crossed too, not only the result
    output = studio.workspace / "Projects" / project_id / success["result"]["output_path"]
    assert output.is_file() and output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with api(studio, "api-2") as http:
        assert [t["status"] for t in takes(http, project_id, node_id)] == ["completed"]
    watcher.close()
    clicker.close()


def test_a_batch_survives_the_services_process_being_killed_mid_batch(studio: Studio) -> None:
    with api(studio, "api-1") as http:
        project_id, node_ids = new_project(http, "Prod Batch", 3)
    watcher = socket(studio, "api-2", project_id)
    flow_run_id = studio.run_batch(project_id, takes_per_node=4)

    first = watcher.until(is_("task_success"), timeout=240, what="the batch's first take")
    studio.prefect.kill("prefect-services")  # SIGKILL: a crash
    killed_at = time.monotonic()
    time.sleep(5)
    studio.prefect.start_services()

    successes = of_type("task_success", first)

    def twelve(message: dict) -> bool:
        if message["type"] == "server:task_success":
            successes.append(message["payload"])
        return len(successes) >= 12

    watcher.until(twelve, timeout=400, what="12 takes done")
    wait_until(lambda: studio.flow_run_state(flow_run_id) == "COMPLETED", 120,
               "the flow run to complete")
    assert len({s["result"]["take_id"] for s in successes}) == 12  # each once
    with api(studio, "api-1") as http:
        for node_id in node_ids:
            done = takes(http, project_id, node_id)
            assert [t["status"] for t in done] == ["completed"] * 4
            for take in done:
                assert (studio.workspace / "Projects" / project_id / take["path"]).is_file()
    # The task-run recorder (a service) caught up from Redis: no state change was lost.
    wait_until(lambda: sorted(studio.task_run_states(flow_run_id)) == ["COMPLETED"] * 12, 120,
               "the task runs' states recorded after the services came back")
    print(f"services down {time.monotonic() - killed_at:.0f} s before all 12 takes were done")
    assert studio.prefect.children["prefect-services"].alive()
    watcher.close()


def test_takes_queued_when_the_stack_stops_render_after_it_starts_again(studio: Studio) -> None:
    with api(studio, "api-1") as http:
        project_id, [node_id] = new_project(http, "Prod Restart", 1, steps=10)
    clicker = socket(studio, "api-1", project_id)
    for _ in range(4):
        clicker.click(node_id)
    clicker.until(is_("node_state_updated", state="generating"), timeout=120,
                  what="the first take to start")
    clicker.close()

    studio.stop_studio()
    studio.prefect.stop()
    assert not answers(studio.prefect.api_url)  # really down
    restarted = time.monotonic()
    studio.start_prefect()
    studio.start_worker(Quality.standard)
    studio.start_api("api-1")
    up = time.monotonic() - restarted

    with api(studio, "api-1") as http:
        def settled() -> list[dict] | None:
            found = takes(http, project_id, node_id)
            return found if all(t["status"] in ("completed", "failed") for t in found) else None

        final = wait_until(settled, 300, "every take to be rendered or failed", every=1)
    took = time.monotonic() - restarted
    statuses = [t["status"] for t in final]
    assert len(final) == 4  # none lost
    for take in final:
        if take["status"] == "failed":
            assert take["error"]  # with a reason
        else:
            assert (studio.workspace / "Projects" / project_id / take["path"]).is_file()
    # The take that was rendering died with its worker; the three queued ones render.
    assert statuses.count("completed") >= 3, final
    print(f"stack up again in {up:.0f} s; the 4 takes settled {took - up:.0f} s later: {statuses}")


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
