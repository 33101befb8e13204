"""Takes: deterministic names, atomic allocation under concurrency, and their life cycle."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from studio.graph import fingerprint, node_state, resolve_inputs, to_generation_params
from studio.jobs import GenerationParams
from studio.manifest import Shot, TakeStatus
from studio.nodes import NodeState
from studio.prepare import prepare_take
from studio.project_file import save_project
from studio.store import ProjectStore
from studio.takes import (
    TakeError,
    cancel_if_queued,
    claim_hand_out,
    complete_take,
    fail_take,
    record_submission,
    reserve_take,
    set_active_take,
    start_take,
    take_filename,
    take_path,
)
from studio.tiers import Quality
from studio.workspace import PathEscapeError, Workspace
from tests.factories import odyssey

RENDERS = "03_Renders/SCENE_02/SHOT_015"


@pytest.fixture
def store(tmp_path: Path) -> ProjectStore:
    store = ProjectStore(Workspace(tmp_path))
    project = odyssey()
    store.project_dir(project.id).mkdir(parents=True)
    save_project(store.manifest_path(project.id), project)
    return store


def reserve(store: ProjectStore) -> tuple[int, str]:
    project = store.load("Project_Odyssey")
    take = reserve_take(
        store,
        "Project_Odyssey",
        "shot15",
        quality_requested=Quality.high,
        quality_used=Quality.standard,
        pipeline_id="flux-dev-fp8",
        params=to_generation_params(resolve_inputs(project, "shot15")),
        fingerprint=fingerprint(project, "shot15"),
    )
    return take.number, take.path


def reserve_in_workspace(root: str) -> tuple[int, str]:
    """Runs in a worker process."""
    return reserve(ProjectStore(Workspace(root)))


def render(store: ProjectStore, rel: str) -> None:
    (store.project_dir("Project_Odyssey") / rel).write_bytes(b"\x89PNG")


def test_a_take_is_named_after_its_shot_version_and_number() -> None:
    shot = Shot(scene="SCENE_02", shot="SHOT_015", version="v01")

    assert take_filename(shot, 4) == "SHOT-015_v01_take04.png"
    assert take_path(shot, 4) == f"{RENDERS}/SHOT-015_v01_take04.png"
    assert take_filename(shot, 123) == "SHOT-015_v01_take123.png"


def test_a_reserved_take_is_queued_with_its_path_and_folder_made(store: ProjectStore) -> None:
    assert reserve(store) == (1, f"{RENDERS}/SHOT-015_v01_take01.png")

    (take,) = store.load("Project_Odyssey").nodes[4].takes
    assert (take.status, take.quality_requested, take.quality_used) == (
        "queued",
        "high",
        "standard",
    )
    assert GenerationParams.model_validate(take.params).seed == 42
    assert (store.project_dir("Project_Odyssey") / RENDERS).is_dir()


def test_a_number_whose_file_is_already_on_disk_is_skipped(store: ProjectStore) -> None:
    folder = store.project_dir("Project_Odyssey") / RENDERS
    folder.mkdir(parents=True)
    for n in (1, 2):
        (folder / f"SHOT-015_v01_take{n:02d}.png").write_bytes(b"someone else's render")

    assert reserve(store)[0] == 3
    assert (folder / "SHOT-015_v01_take01.png").read_bytes() == b"someone else's render"


def allocate_50(store: ProjectStore, pool: Executor) -> None:
    root = str(store.workspace.root)
    with pool:
        results = list(pool.map(reserve_in_workspace, [root] * 50))

    assert sorted(n for n, _ in results) == list(range(1, 51))
    assert len({path for _, path in results}) == 50
    takes = store.load("Project_Odyssey").nodes[4].takes
    assert sorted((t.number, t.path) for t in takes) == sorted(results)


def test_50_concurrent_allocations_in_threads_get_50_distinct_takes(store: ProjectStore) -> None:
    allocate_50(store, ThreadPoolExecutor(max_workers=16))


def test_50_concurrent_allocations_in_processes_get_50_distinct_takes(
    store: ProjectStore,
) -> None:
    # spawn: fresh interpreters, as separate workers would be, with nothing shared by fork.
    allocate_50(store, ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")))


def test_a_renders_folder_linked_out_of_the_project_is_refused(
    store: ProjectStore, tmp_path: Path
) -> None:
    renders = store.project_dir("Project_Odyssey") / "03_Renders"
    renders.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", renders / "SCENE_02")

    with pytest.raises(PathEscapeError, match="through a symlink"):
        reserve(store)
    assert store.load("Project_Odyssey").nodes[4].takes == []


def test_starting_a_take_marks_it_generating_and_counts_attempts(store: ProjectStore) -> None:
    reserve(store)
    take_id = store.load("Project_Odyssey").nodes[4].takes[0].id

    start_take(store, "Project_Odyssey", "shot15", take_id, task_run_id="run-1")
    take = start_take(store, "Project_Odyssey", "shot15", take_id)

    assert (take.status, take.attempts, take.task_run_id) == ("generating", 2, "run-1")
    assert node_state(store.load("Project_Odyssey"), "shot15") == NodeState.generating


def _ended(store: ProjectStore, how: str) -> str:
    """A take of shot15 that ended `how`: completed (its file written), failed or cancelled."""
    _, take_id = _reserved_take(store)
    if how == "completed":
        render(store, _take_of(store, take_id).path)
        complete_take(store, "Project_Odyssey", "shot15", take_id, timings={})
    elif how == "failed":
        fail_take(store, "Project_Odyssey", "shot15", take_id, "out of GPU memory")
    else:
        cancel_if_queued(store, "Project_Odyssey", "shot15", take_id)
    return take_id


def test_a_failed_take_never_starts_again(store: ProjectStore) -> None:
    take_id = _ended(store, "failed")

    with pytest.raises(TakeError, match="take 1 of node shot15 is already failed") as raised:
        start_take(store, "Project_Odyssey", "shot15", take_id, task_run_id="late-copy")

    assert raised.value.status == TakeStatus.failed
    take = _take_of(store, take_id)
    assert (take.status, take.attempts, take.error) == ("failed", 0, "out of GPU memory")
    assert take.task_run_id is None  # the late copy's run is not recorded either


def test_a_batchs_failed_attempt_is_started_again_only_by_its_own_retry(
        store: ProjectStore) -> None:
    # Prefect retries an infrastructure failure as the same task run in the batch's flow run.
    job = prepare_take(store, "Project_Odyssey", "shot15", quality_requested=Quality.standard,
                       quality_used=Quality.standard, flow_run_id="batch-1")
    start_take(store, "Project_Odyssey", "shot15", job.take_id, task_run_id="run-1",
               flow_run_id="batch-1")
    fail_take(store, "Project_Odyssey", "shot15", job.take_id, "the runner was killed")

    for task_run, flow_run in (("run-2", "batch-1"), ("run-1", None), ("run-1", "batch-2")):
        with pytest.raises(TakeError, match="is already failed"):
            start_take(store, "Project_Odyssey", "shot15", job.take_id, task_run_id=task_run,
                       flow_run_id=flow_run)
    take = start_take(store, "Project_Odyssey", "shot15", job.take_id, task_run_id="run-1",
                      flow_run_id="batch-1")

    assert (take.status, take.attempts, take.error) == ("generating", 2, None)


def test_a_cancelled_take_never_starts_again(store: ProjectStore) -> None:
    take_id = _ended(store, "cancelled")

    with pytest.raises(TakeError, match="take 1 of node shot15 is already cancelled") as raised:
        start_take(store, "Project_Odyssey", "shot15", take_id, task_run_id="late-copy")

    assert raised.value.status == TakeStatus.cancelled
    assert (_take_of(store, take_id).status, _take_of(store, take_id).attempts) == (
        "cancelled", 0)


def test_a_completed_take_never_starts_again(store: ProjectStore) -> None:
    take_id = _ended(store, "completed")

    with pytest.raises(TakeError, match="take 1 of node shot15 is already completed") as raised:
        start_take(store, "Project_Odyssey", "shot15", take_id, task_run_id="late-copy")

    assert raised.value.status == TakeStatus.completed
    node = store.load("Project_Odyssey").get_node("shot15")
    assert (node.takes[0].status, node.takes[0].attempts, node.active_take) == (
        "completed", 0, take_id)


def test_a_completed_take_becomes_the_active_take(store: ProjectStore) -> None:
    _, rel = reserve(store)
    take_id = store.load("Project_Odyssey").nodes[4].takes[0].id
    render(store, rel)

    complete_take(store, "Project_Odyssey", "shot15", take_id, timings={"total": 1.5})

    project = store.load("Project_Odyssey")
    assert project.nodes[4].preview == rel
    assert project.nodes[4].takes[0].timings == {"total": 1.5}
    assert node_state(project, "shot15") == NodeState.completed


def test_a_take_without_its_image_cannot_complete(store: ProjectStore) -> None:
    reserve(store)
    take_id = store.load("Project_Odyssey").nodes[4].takes[0].id

    with pytest.raises(TakeError, match="SHOT-015_v01_take01.png does not exist"):
        complete_take(store, "Project_Odyssey", "shot15", take_id, timings={})


def test_a_failed_take_keeps_the_previous_active_take(store: ProjectStore) -> None:
    _, rel = reserve(store)
    reserve(store)
    first, second = (t.id for t in store.load("Project_Odyssey").nodes[4].takes)
    render(store, rel)
    complete_take(store, "Project_Odyssey", "shot15", first, timings={})

    fail_take(store, "Project_Odyssey", "shot15", second, "out of GPU memory")

    node = store.load("Project_Odyssey").nodes[4]
    assert (node.active_take, node.takes[1].status) == (first, TakeStatus.failed)
    assert node.takes[1].error == "out of GPU memory"
    assert node_state(store.load("Project_Odyssey"), "shot15") == NodeState.error


def test_an_older_take_can_be_made_active_again(store: ProjectStore) -> None:
    for _ in range(2):
        _, rel = reserve(store)
        render(store, rel)
    first, second = (t.id for t in store.load("Project_Odyssey").nodes[4].takes)
    complete_take(store, "Project_Odyssey", "shot15", first, timings={})
    complete_take(store, "Project_Odyssey", "shot15", second, timings={})

    set_active_take(store, "Project_Odyssey", "shot15", first)

    assert store.load("Project_Odyssey").nodes[4].active_take == first


def test_only_a_completed_take_can_be_made_active(store: ProjectStore) -> None:
    reserve(store)
    take_id = store.load("Project_Odyssey").nodes[4].takes[0].id

    with pytest.raises(TakeError, match="take 1 of node shot15 is queued; only a completed"):
        set_active_take(store, "Project_Odyssey", "shot15", take_id)


def test_a_node_without_takes_is_refused(store: ProjectStore) -> None:
    with pytest.raises(TakeError, match="node prompt is a string node; it has no takes"):
        fail_take(store, "Project_Odyssey", "prompt", "x", "boom")


def test_a_hand_out_is_recorded_once_and_a_worker_that_was_first_keeps_its_run(
        store: ProjectStore) -> None:
    _, take_id = _reserved_take(store)

    record_submission(store, "Project_Odyssey", "shot15", take_id, "run-1")
    record_submission(store, "Project_Odyssey", "shot15", take_id, "run-2")
    assert _take_of(store, take_id).task_run_id == "run-1"

    record_submission(store, "Project_Odyssey", "shot15", take_id, "run-3", again=True)
    assert _take_of(store, take_id).task_run_id == "run-3"  # Prefect lost run-1


def test_of_two_processes_claiming_the_same_hand_out_one_wins(store: ProjectStore) -> None:
    _, take_id = _reserved_take(store)
    seen = _take_of(store, take_id)

    assert claim_hand_out(store, "Project_Odyssey", "shot15", seen)
    assert not claim_hand_out(store, "Project_Odyssey", "shot15", seen)
    assert _take_of(store, take_id).hand_outs == 1


def test_a_take_handed_out_since_it_was_read_cannot_be_claimed_for_another_hand_out(
        store: ProjectStore) -> None:
    # The reconciler read the take before its dispatcher recorded the run it handed out.
    _, take_id = _reserved_take(store)
    seen = _take_of(store, take_id)
    record_submission(store, "Project_Odyssey", "shot15", take_id, "run-of-the-dispatcher")

    assert not claim_hand_out(store, "Project_Odyssey", "shot15", seen)
    assert _take_of(store, take_id).hand_outs == 0


def test_a_queued_take_is_cancelled_at_once_a_generating_one_is_left_to_its_worker(
        store: ProjectStore) -> None:
    _, queued = _reserved_take(store)
    _, generating = _reserved_take(store)
    start_take(store, "Project_Odyssey", "shot15", generating)

    assert cancel_if_queued(store, "Project_Odyssey", "shot15", queued).status == \
        TakeStatus.cancelled
    assert cancel_if_queued(store, "Project_Odyssey", "shot15", generating).status == \
        TakeStatus.generating
    with pytest.raises(TakeError, match="only a queued or generating take can be cancelled"):
        cancel_if_queued(store, "Project_Odyssey", "shot15", queued)


def _reserved_take(store: ProjectStore) -> tuple[int, str]:
    project = store.load("Project_Odyssey")
    take = reserve_take(store, "Project_Odyssey", "shot15", quality_requested=Quality.standard,
                        quality_used=Quality.standard, pipeline_id="flux-dev-fp8",
                        params=to_generation_params(resolve_inputs(project, "shot15")),
                        fingerprint=fingerprint(project, "shot15"))
    return take.number, take.id


def _take_of(store: ProjectStore, take_id: str):
    take = store.load("Project_Odyssey").get_node("shot15").get_take(take_id)
    assert take is not None
    return take
