"""Issue 4: takes on warm per-tier task workers, batches and graphs as flows, events, artifacts.

Everything runs for real: the session's Prefect server, `studio worker` processes, an event
subscriber in another process, a Process work pool with a real worker, and the tiny FLUX model.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import StateType

from scripts.local_prefect import LocalPrefectServer
from studio.jobs import LoraRef
from studio.manifest import Edge, TakeStatus, new_id, new_node
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.submit import submit_take
from tasks.text_to_image import artifact_key
from tests.stack_helpers import Proc, add_text_to_image, start_tier_worker, studio_env, wait_until


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    monkeypatch_module: pytest.MonkeyPatch,
) -> dict[str, str]:
    workspace = tmp_path_factory.mktemp("workspace")
    environment = studio_env(workspace, tiny_model_dir / "Library" / "AI_Models")
    for key in ("STUDIO_WORKSPACE", "STUDIO_MODELS_ROOT"):
        monkeypatch_module.setenv(key, environment[key])
    return environment


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def store(env: dict[str, str]) -> ProjectStore:
    return ProjectStore(Workspace(env["STUDIO_WORKSPACE"]))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def standard_worker(
    prefect_server: LocalPrefectServer, env: dict[str, str], logs: Path
) -> Iterator[Proc]:
    proc = start_tier_worker(Quality.standard, env, logs / "worker-standard.log")
    yield proc
    proc.kill()


def _take(store: ProjectStore, project_id: str, node_id: str, take_id: str):
    node = store.load(project_id).get_node(node_id)
    assert node is not None
    take = node.get_take(take_id)
    assert take is not None
    return take


def _finished(store: ProjectStore, project_id: str, node_id: str, take_id: str):
    take = _take(store, project_id, node_id, take_id)
    return take if take.status in (TakeStatus.completed, TakeStatus.failed) else None


def _artifacts(key: str) -> list:
    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    return asyncio.run(read())


def _final_state(task_run_id: str):
    async def read():
        async with get_client() as client:
            return (await client.read_task_run(task_run_id)).state
    state = asyncio.run(read())
    return state if state is not None and state.is_final() else None


def _click(store: ProjectStore, project_id: str, node_id: str, quality: Quality = Quality.standard):
    job = prepare_take(store, project_id, node_id, quality_requested=quality, quality_used=quality)
    return job, submit_take(job)


def test_a_click_renders_a_take_on_the_warm_worker_and_records_it_everywhere(
    store: ProjectStore, standard_worker: Proc, env: dict[str, str], logs: Path
) -> None:
    project = store.create("Project Odyssey", "standard")
    node_id = add_text_to_image(store, project.id, shot="SHOT_015", scene="SCENE_02")
    events_file = logs / "events.jsonl"
    follower = Proc(
        [sys.executable, "-m", "tests.tools.follow_events", project.id, node_id,
         str(events_file)],
        env,
        logs / "follower.log",
    )
    try:
        wait_until(lambda: "subscribed" in follower.output(), 60, "the event subscriber")
        job, task_run_id = _click(store, project.id, node_id)
        take = wait_until(
            lambda: _finished(store, project.id, node_id, job.take_id), 120, "the take to finish"
        )

        assert take.status == TakeStatus.completed, take.error
        assert take.path == "03_Renders/SCENE_02/SHOT_015/SHOT-015_v01_take01.png"
        with Image.open(store.project_dir(project.id) / take.path) as image:
            assert image.size == (256, 256)
        assert take.task_run_id == task_run_id
        assert store.load(project.id).get_node(node_id).active_take == take.id

        images = [a for a in _artifacts(artifact_key(job)) if a.type == "image"]
        assert len(images) == 1
        assert images[0].data.endswith(f"/files/{take.path}")

        def seen() -> list[dict]:
            lines = events_file.read_text().splitlines() if events_file.exists() else []
            events = [json.loads(line) for line in lines]
            return events if any(e["event"] == "studio.take.succeeded" for e in events) else []

        events = wait_until(seen, 30, "the succeeded event in the subscriber")
        names = [e["event"] for e in events]
        assert names[0] == "studio.take.started", events[0]
        assert names.count("studio.take.started") == 1, names
        progress = [e["payload"]["progress"] for e in events if e["event"].endswith("progress")]
        assert progress == sorted(progress) and progress[-1] == 100
        take_resource = f"studio.take.{job.take_id}"
        assert {e["resource"]["prefect.resource.id"] for e in events} == {take_resource}
        assert {e["resource"]["studio.task-run"] for e in events} == {task_run_id}
    finally:
        follower.kill()


def test_a_second_take_on_the_same_worker_does_not_load_the_pipeline_again(
    store: ProjectStore, standard_worker: Proc
) -> None:
    project = store.create("Warm", "standard")
    node_id = add_text_to_image(store, project.id)
    results = []
    for _ in range(2):
        _, task_run_id = _click(store, project.id, node_id)
        state = wait_until(lambda i=task_run_id: _final_state(i), 120, "the task run to end")
        results.append(state.result())
    # The worker loaded its pipeline at start, before the first click.
    assert [r["loaded_pipeline"] for r in results] == [False, False]
    assert standard_worker.output().count("loaded from") == 1


def test_a_failing_runner_fails_the_task_run_with_its_message_and_leaves_no_file(
    store: ProjectStore, standard_worker: Proc
) -> None:
    project = store.create("Broken LoRA", "standard")
    node_id = add_text_to_image(store, project.id)
    job = prepare_take(
        store,
        project.id,
        node_id,
        quality_requested=Quality.standard,
        quality_used=Quality.standard,
    )
    missing = LoraRef(path="Library/LoRAs/nobody.safetensors", weight=0.8, kind="character")
    job = job.model_copy(update={"params": job.params.model_copy(update={"loras": [missing]})})
    task_run_id = submit_take(job)
    take = wait_until(
        lambda: _finished(store, project.id, node_id, job.take_id), 120, "the take to fail"
    )

    assert take.status == TakeStatus.failed
    assert "nobody.safetensors" in (take.error or "")
    assert not (store.project_dir(project.id) / take.path).exists()

    final = wait_until(lambda: _final_state(task_run_id), 30, "the task run to end")
    assert final.type == StateType.FAILED
    assert "nobody.safetensors" in (final.message or "")


def test_a_worker_killed_mid_take_leaves_the_take_failed_and_no_partial_file(
    store: ProjectStore, env: dict[str, str], logs: Path, prefect_server: LocalPrefectServer
) -> None:
    from tasks.recovery import fail_abandoned_takes

    worker = start_tier_worker(Quality.low, env, logs / "worker-low-killed.log")
    project = store.create("Killed", "low")
    # Large and many steps: slow enough on the tiny model to be killed in the middle.
    node_id = add_text_to_image(store, project.id, steps=100, size=1024)
    job, _ = _click(store, project.id, node_id, Quality.low)
    wait_until(
        lambda: _take(store, project.id, node_id, job.take_id).status == TakeStatus.generating,
        60,
        "the take to start",
    )
    worker.kill(signal.SIGKILL)

    failed = fail_abandoned_takes(store, project.id, stale_after=0)

    take = _take(store, project.id, node_id, job.take_id)
    assert [t.id for t in failed] == [job.take_id]
    assert take.status == TakeStatus.failed
    assert "worker stopped" in (take.error or "")
    shot_dir = (store.project_dir(project.id) / take.path).parent
    assert list(shot_dir.iterdir()) == []


def test_run_graph_renders_with_the_wired_primitive_and_skips_unchanged_upstream(
    store: ProjectStore, prefect_server: LocalPrefectServer
) -> None:
    from flows.graph import run_graph

    project = store.create("Graph", "standard")
    node_id = add_text_to_image(store, project.id, prompt="typed on the node")
    text = new_node("string", params={"value": "from the primitive"})
    with store.edit(project.id) as p:
        p.nodes.append(text)
        p.edges.append(
            Edge(
                id=new_id(),
                source=text.id,
                source_socket="value",
                target=node_id,
                target_socket="prompt",
            )
        )

    first = run_graph(project.id, node_id)
    second = run_graph(project.id, node_id)

    takes = store.load(project.id).get_node(node_id).takes
    assert [t.params["prompt"] for t in takes] == ["from the primitive"] * 2
    assert first["ran_upstream"] == [text.id]
    assert second["ran_upstream"] == []
