"""The text-to-image task: one take through a Function Runner, recorded as file, manifest entry,
Prefect artifact and events.

One implementation, `render_take`, and one Prefect task per quality tier: Prefect routes
background tasks by task key (qualname + code hash), so each tier's warm worker needs a function
of its own.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect import Task, task
from prefect.artifacts import create_image_artifact, create_table_artifact
from prefect.context import TaskRunContext

from runners.env import runner_env
from runners.registry import strategy_for
from runners.strategies import RunnerFailed
from studio.jobs import TakeJob
from studio.store import ProjectStore
from studio.takes import TakeError, complete_take, fail_take, start_take
from studio.tiers import TIERS, Quality
from studio.workspace import Workspace
from tasks import events
from tasks.leases import Lease

log = logging.getLogger(__name__)


def public_url() -> str:
    """Where browsers reach the API (the Prefect UI shows take images from it)."""
    return os.environ.get("STUDIO_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")


def take_label(job: TakeJob) -> str:
    """`Project_Odyssey · SHOT-015 · v01 · take04`: readable run names in the Prefect UI."""
    return " · ".join([job.project_id, *Path(job.output_path).stem.split("_")])


def take_tags(job: TakeJob) -> list[str]:
    shot = Path(job.output_path).parent.name
    return [
        f"project:{job.project_id}",
        f"node:{job.node_id}",
        f"shot:{shot}",
        f"quality:{job.quality_used.value}",
    ]


def artifact_key(job: TakeJob) -> str:
    """One key per node, so the Prefect UI lists a node's takes as versions, in order."""
    raw = f"take-{job.project_id}-{job.node_id}".lower()
    return "".join(c if c.isalnum() or c == "-" else "-" for c in raw)


def _record_artifacts(job: TakeJob, seed: int | None, timings: dict[str, float]) -> None:
    url = f"{public_url()}/api/projects/{quote(job.project_id)}/files/{quote(job.output_path)}"
    key = artifact_key(job)
    label = take_label(job)
    create_image_artifact(image_url=url, key=key, description=label)
    p = job.params
    rows = [
        ("take", label),
        ("file", job.output_path),
        ("prompt", p.prompt),
        ("negative prompt", p.negative_prompt),
        ("seed", seed if seed is not None else p.seed),
        ("steps", p.steps),
        ("cfg scale", p.cfg_scale),
        ("size", f"{p.width}x{p.height}"),
        ("pipeline", job.pipeline_id),
        ("quality", f"{job.quality_used.value} (asked {job.quality_requested.value})"),
        *((f"{name} (s)", round(value, 3)) for name, value in timings.items()),
    ]
    create_table_artifact(
        table=[{"parameter": k, "value": str(v)} for k, v in rows],
        key=f"{key}-params",
        description=label,
    )


def _failure_text(job: TakeJob, exc: RunnerFailed) -> str:
    if exc.exit_code == 4:
        tier = TIERS[job.quality_used]
        return (
            f"Out of GPU memory on the {tier.quality.value} tier ({tier.vram_gb} GB, "
            f"{tier.pipeline_id}): {exc.message}"
        )
    return exc.message


def _fail(store: ProjectStore, job: TakeJob, task_run_id: str | None, message: str) -> None:
    try:
        fail_take(store, job.project_id, job.node_id, job.take_id, message)
    except (TakeError, LookupError, ValueError) as exc:  # project or take gone: still tell
        log.warning("could not record the failure of %s: %s", job.take_id, exc)
    events.emit(events.FAILED, job, task_run_id, error=message)


def render_take(job: TakeJob, mode: str | None = None) -> dict[str, Any]:
    """Runs one reserved take and records it. Raises RunnerFailed when the runner fails."""
    workspace = Workspace()
    store = ProjectStore(workspace)
    project_dir = store.project_dir(job.project_id)
    ctx = TaskRunContext.get()
    task_run_id = str(ctx.task_run.id) if ctx else None
    flow_run_id = str(ctx.task_run.flow_run_id) if ctx and ctx.task_run.flow_run_id else None
    result_of = {"output_path": job.output_path, "take_id": job.take_id}

    def on_progress(percent: int, step: str, preview_path: str | None) -> None:
        preview = None
        if preview_path:
            preview = Path(preview_path).resolve().relative_to(project_dir.resolve()).as_posix()
        events.emit(events.PROGRESS, job, task_run_id,
                    progress=percent, step=step, preview_path=preview)

    started = time.perf_counter()
    preview_file = (project_dir / job.output_path).with_suffix(".preview.png")
    # The lease covers the recording too: a take is never "generating" without a live lease.
    with Lease(workspace.root, job.take_id):
        try:
            start_take(store, job.project_id, job.node_id, job.take_id,
                       task_run_id=task_run_id, flow_run_id=flow_run_id)
        except TakeError as exc:  # delivered again after it completed: nothing left to do
            log.warning("skipping %s: %s", take_label(job), exc)
            return {**result_of, "skipped": str(exc)}
        try:
            events.emit(events.STARTED, job, task_run_id)
            strategy = strategy_for(job.pipeline_id, mode)
            env = runner_env(job, workspace_root=workspace.root, project_dir=project_dir,
                             in_container=strategy.in_container)
            try:
                result = strategy.run(env, on_progress)
            finally:
                # The live preview has served its purpose once the take ends, either way.
                preview_file.unlink(missing_ok=True)
            timings = {**result.timings, "total": time.perf_counter() - started}
            complete_take(store, job.project_id, job.node_id, job.take_id, timings=timings)
        except RunnerFailed as exc:
            message = _failure_text(job, exc)
            _fail(store, job, task_run_id, message)
            raise RunnerFailed(message, exc.exit_code) from exc
        except BaseException as exc:  # a bug or an interrupt must not leave it "generating"
            _fail(store, job, task_run_id, f"{type(exc).__name__}: {exc}")
            raise

    _record_artifacts(job, result.seed, timings)
    events.emit(events.SUCCEEDED, job, task_run_id, output_path=job.output_path)
    return {
        **result_of,
        "seed": result.seed if result.seed is not None else job.params.seed,
        "loaded_pipeline": result.loaded_pipeline,
    }


_TASK_OPTIONS: dict[str, Any] = {
    "task_run_name": lambda parameters: take_label(TakeJob.model_validate(parameters["job"])),
    "persist_result": True,
}


@task(name="text_to_image_low", **_TASK_OPTIONS)
def text_to_image_low(job: TakeJob) -> dict[str, Any]:
    return render_take(job)


@task(name="text_to_image_standard", **_TASK_OPTIONS)
def text_to_image_standard(job: TakeJob) -> dict[str, Any]:
    return render_take(job)


@task(name="text_to_image_high", **_TASK_OPTIONS)
def text_to_image_high(job: TakeJob) -> dict[str, Any]:
    return render_take(job)


TIER_TASKS: dict[Quality, Task[..., dict[str, Any]]] = {
    Quality.low: text_to_image_low,
    Quality.standard: text_to_image_standard,
    Quality.high: text_to_image_high,
}


def tier_task(quality: Quality | str) -> Task[..., dict[str, Any]]:
    return TIER_TASKS[Quality(quality)]
