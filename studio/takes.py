"""Takes: their deterministic names, and every transition of their life.

reserve -> queued (handed to Prefect: `record_submission`) -> generating (`start_take`) ->
completed | failed | cancelled; a generating take whose worker died is re-queued (`retry_take`).
Every change goes through `ProjectStore.edit`, so it happens under the project's lock; `reserve`
works on a project already being edited, so a click reads project.json once.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from studio.jobs import TakeJob
from studio.manifest import Node, Project, Shot, Take, TakeStatus, now
from studio.params import GenerationParams
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import RENDERS, safe_path


class TakeError(ValueError):
    """A transition the take's status does not allow; `status` is what the take is."""

    def __init__(self, message: str, status: TakeStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


def take_filename(shot: Shot, number: int) -> str:
    """SCENE_02/SHOT_015/v01, take 4 -> "SHOT-015_v01_take04.png"."""
    return f"{shot.shot.replace('SHOT_', 'SHOT-')}_{shot.version}_take{number:02d}.png"


def take_path(shot: Shot, number: int) -> str:
    """Relative to the project: "03_Renders/SCENE_02/SHOT_015/SHOT-015_v01_take04.png"."""
    return f"{RENDERS}/{shot.scene}/{shot.shot}/{take_filename(shot, number)}"


def _node(project: Project, node_id: str) -> Node:
    node = project.get_node(node_id)
    if node is None:
        raise TakeError(f"project {project.id} has no node {node_id!r}")
    if node.shot is None:
        raise TakeError(f"node {node_id} is a {node.node_type} node; it has no takes")
    return node


def _take(project: Project, node_id: str, take_id: str) -> tuple[Node, Take]:
    node = _node(project, node_id)
    take = node.get_take(take_id)
    if take is None:
        raise TakeError(f"node {node_id} has no take {take_id!r}")
    return node, take


def take_job(project_id: str, node: Node, take: Take) -> TakeJob:
    """The job of a reserved take, from its manifest entry and its node's shot."""
    if node.shot is None:
        raise TakeError(f"node {node.id} is a {node.node_type} node; it has no takes")
    return TakeJob(
        project_id=project_id, node_id=node.id, take_id=take.id, shot=node.shot,
        take_number=take.number, output_path=take.path,
        quality_requested=take.quality_requested, quality_used=take.quality_used,
        pipeline_id=take.pipeline_id, params=GenerationParams.model_validate(take.params),
    )


def reserve(
    project: Project,
    project_dir: Path,
    node_id: str,
    *,
    quality_requested: Quality,
    quality_used: Quality,
    pipeline_id: str,
    params: GenerationParams,
    fingerprint: str,
    flow_run_id: str | None = None,
) -> TakeJob:
    """Allocate the node's next take number and path in `project` (being edited under its lock)
    and record the take as queued (owned by `flow_run_id` when a batch run renders it); returns
    its job.

    The number is past every take in the manifest and skips any file already on disk (e.g. left
    by a take the manifest lost), so no render is ever overwritten.
    """
    node = _node(project, node_id)
    assert node.shot is not None
    number = max((t.number for t in node.takes), default=0) + 1
    while safe_path(project_dir, take_path(node.shot, number)).exists():
        number += 1
    path = take_path(node.shot, number)
    safe_path(project_dir, path).parent.mkdir(parents=True, exist_ok=True)
    take = Take(
        id=str(uuid.uuid4()),
        number=number,
        path=path,
        params=params.model_dump(mode="json"),
        fingerprint=fingerprint,
        pipeline_id=pipeline_id,
        quality_requested=quality_requested,
        quality_used=quality_used,
        created_at=now(),
        flow_run_id=flow_run_id,
    )
    node.takes.append(take)
    return take_job(project.id, node, take)


def reserve_take(
    store: ProjectStore,
    project_id: str,
    node_id: str,
    *,
    quality_requested: Quality,
    quality_used: Quality,
    pipeline_id: str,
    params: GenerationParams | dict[str, Any],
    fingerprint: str,
) -> Take:
    """`reserve` in its own locked edit; returns the take as recorded."""
    with store.edit(project_id) as project:
        job = reserve(project, store.project_dir(project_id), node_id,
                      quality_requested=quality_requested, quality_used=quality_used,
                      pipeline_id=pipeline_id, params=GenerationParams.model_validate(params),
                      fingerprint=fingerprint)
        _, take = _take(project, node_id, job.take_id)
    return take


def record_submission(store: ProjectStore, project_id: str, node_id: str, take_id: str,
                      task_run_id: str, *, again: bool = False) -> None:
    """A queued take was handed to Prefect as `task_run_id`. A first hand-out leaves a run id its
    worker recorded first; handed out `again` (Prefect lost the first run), the new run replaces
    the old while the take is still queued."""
    with store.edit(project_id) as project:
        node = project.get_node(node_id)
        take = node.get_take(take_id) if node else None
        if take is None:
            return
        if take.status == TakeStatus.queued if again else take.task_run_id is None:
            take.task_run_id = task_run_id


def claim_hand_out(store: ProjectStore, project_id: str, node_id: str, take: Take) -> bool:
    """Claim the next hand-out of a queued take as seen in `take`: of several API processes
    reconciling at once, exactly one wins (the count moved on, the take started, or a
    dispatcher recorded its run since `take` was read: False)."""
    with store.edit(project_id) as project:
        node = project.get_node(node_id)
        current = node.get_take(take.id) if node else None
        if (current is None or current.status != TakeStatus.queued
                or current.hand_outs != take.hand_outs
                or current.task_run_id != take.task_run_id):
            return False
        current.hand_outs += 1
    return True


def _batch_retry(take: Take, task_run_id: str | None, flow_run_id: str | None) -> bool:
    """Prefect retrying a batch's failed attempt (an infrastructure failure, tasks/retry.py):
    the same task run, again, inside the flow run that reserved the take. The attempt was
    recorded failed before Prefect decided to retry it. A task worker's run has no flow run, so
    a late copy of one is never taken for this."""
    return (take.status == TakeStatus.failed and take.flow_run_id is not None
            and flow_run_id == take.flow_run_id
            and task_run_id is not None and task_run_id == take.task_run_id)


def start_take(
    store: ProjectStore,
    project_id: str,
    node_id: str,
    take_id: str,
    *,
    task_run_id: str | None = None,
    flow_run_id: str | None = None,
) -> Take:
    """Mark a take generating; each start (a retry too) counts as an attempt.

    Only a take still in flight starts: a copy of a task run delivered after its take ended
    (completed, failed or cancelled) must never render it again. The one exception is a
    batch's own retry (`_batch_retry`)."""
    with store.edit(project_id) as project:
        _, take = _take(project, node_id, take_id)
        if take.status not in (TakeStatus.queued, TakeStatus.generating) and not _batch_retry(
                take, task_run_id, flow_run_id):
            raise TakeError(f"take {take.number} of node {node_id} is already {take.status}; "
                            "an ended take is never started again", take.status)
        take.status = TakeStatus.generating
        take.started_at = now()
        take.attempts += 1
        take.error = None
        take.task_run_id = task_run_id or take.task_run_id
        take.flow_run_id = flow_run_id or take.flow_run_id
    return take


def complete_take(
    store: ProjectStore,
    project_id: str,
    node_id: str,
    take_id: str,
    *,
    timings: dict[str, float],
    task_run_id: str | None = None,
    flow_run_id: str | None = None,
    applied: dict[str, Any] | None = None,
) -> Take:
    """Record a finished take whose image is on disk, and make it the node's active take."""
    with store.edit(project_id) as project:
        node, take = _take(project, node_id, take_id)
        if not safe_path(store.project_dir(project_id), take.path).is_file():
            raise TakeError(
                f"take {take.number} of node {node_id}: {take.path} does not exist; "
                "a take completes only once its image is written"
            )
        take.status = TakeStatus.completed
        take.finished_at = now()
        take.timings = dict(timings)
        take.applied = dict(applied or {})
        take.error = None
        take.task_run_id = task_run_id or take.task_run_id
        take.flow_run_id = flow_run_id or take.flow_run_id
        node.active_take = take.id
    return take


def fail_take(store: ProjectStore, project_id: str, node_id: str, take_id: str, error: str) -> Take:
    """Record why a take failed; the node's active take stays as it was."""
    with store.edit(project_id) as project:
        _, take = _take(project, node_id, take_id)
        if take.status in (TakeStatus.completed, TakeStatus.cancelled):
            raise TakeError(f"take {take.number} of node {node_id} is {take.status}; it cannot "
                            "fail")
        take.status = TakeStatus.failed
        take.finished_at = now()
        take.error = error
    return take


def cancel_take(store: ProjectStore, project_id: str, node_id: str, take_id: str) -> Take:
    """Record a take the artist cancelled while it was queued or generating."""
    with store.edit(project_id) as project:
        _, take = _take(project, node_id, take_id)
        if take.status not in (TakeStatus.queued, TakeStatus.generating):
            raise TakeError(f"take {take.number} of node {node_id} is {take.status}; only a "
                            "queued or generating take can be cancelled")
        take.status = TakeStatus.cancelled
        take.finished_at = now()
        take.error = None
    return take


def cancel_if_queued(store: ProjectStore, project_id: str, node_id: str, take_id: str) -> Take:
    """A queued take is cancelled at once; a generating one is left to its worker (which stops
    at its next step, having been asked). Returns a copy of the take as it now is."""
    with store.edit(project_id) as project:
        _, take = _take(project, node_id, take_id)
        if take.status == TakeStatus.queued:
            take.status = TakeStatus.cancelled
            take.finished_at = now()
        elif take.status != TakeStatus.generating:
            raise TakeError(f"take {take.number} of node {node_id} is {take.status}; only a "
                            "queued or generating take can be cancelled", take.status)
        return take.model_copy()


def retry_take(store: ProjectStore, project_id: str, node_id: str, take_id: str) -> Take:
    """Put a take whose worker died back in the queue: same number and path, its attempts kept
    (the next start counts the next attempt), no task run until it is handed out again."""
    with store.edit(project_id) as project:
        _, take = _take(project, node_id, take_id)
        if take.status != TakeStatus.generating:
            raise TakeError(f"take {take.number} of node {node_id} is {take.status}; only a "
                            "generating take is retried")
        take.status = TakeStatus.queued
        take.started_at = None
        take.task_run_id = None
    return take


def set_active_take(store: ProjectStore, project_id: str, node_id: str, take_id: str) -> Take:
    """Select which completed take the node shows and passes downstream."""
    with store.edit(project_id) as project:
        node, take = _take(project, node_id, take_id)
        if take.status != TakeStatus.completed:
            raise TakeError(
                f"take {take.number} of node {node_id} is {take.status}; only a completed take "
                "can be active"
            )
        node.active_take = take.id
    return take
