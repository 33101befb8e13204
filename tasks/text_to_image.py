"""The text-to-image task: one take through a Function Runner, recorded as file, manifest entry,
Prefect artifact and events.

One implementation, `render_take`, and one Prefect task per quality tier: Prefect routes
background tasks by task key (qualname + code hash), so each tier's warm worker needs a function
of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.artifacts import create_image_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.context import TaskRunContext
from prefect.states import Cancelled

from runners.flux.contract import ExitCode, preview_path_for
from runners.registry import strategy_for
from runners.strategies import RunnerFailed, RunResult
from runners.take_request import take_request
from studio.jobs import TakeJob
from studio.manifest import Take, TakeStatus
from studio.store import ProjectStore
from studio.take_events import TakeCancelled, TakeFailed, TakeProgress, TakeStarted, TakeSucceeded
from studio.takes import TakeError, cancel_take, complete_take, fail_take, start_take
from studio.tiers import TIERS, Quality
from studio.workspace import Workspace
from tasks import artifacts, events
from tasks.cancel import CancelRequested, cancel_requested, clear_cancel
from tasks.leases import STALE_AFTER_SECONDS, Lease, holder_gone, lease_age
from tasks.prefect_retry import is_transient, retry_transient

log = logging.getLogger(__name__)


def take_label(job: TakeJob) -> str:
    """`Project_Odyssey · SHOT-015 · v01 · take04`: readable run names in the Prefect UI."""
    return job.label()


def take_tags(job: TakeJob) -> list[str]:
    return [
        f"project:{job.project_id}",
        f"node:{job.node_id}",
        f"shot:{job.shot.shot}",
        f"quality:{job.quality_used.value}",
    ]


def artifact_key(job: TakeJob) -> str:
    """One key per project and shot: the Prefect UI lists a shot's takes as versions, in order."""
    return artifacts.take_key(job)


def _record_artifacts(job: TakeJob, seed: int | None, timings: dict[str, float]) -> None:
    """The take's record in Prefect, written after its file and project.json entry: a Prefect
    restart meanwhile is waited out (as every call to Prefect is), and if Prefect stays away
    the run still ends Completed, since the take is saved; the worker's log says what is
    missing."""
    label = take_label(job)
    for what, create in (("image", lambda: _image_artifact(job)),
                         ("parameters", lambda: _table_artifact(job, seed, timings))):
        try:
            retry_transient(create, f"recording the {what} artifact of {label}")
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("%s completed but its %s artifact is not in Prefect: %s",
                        label, what, exc)


def _image_artifact(job: TakeJob) -> None:
    url = artifacts.file_url(job.project_id, job.output_path)
    create_image_artifact(image_url=url, key=artifacts.take_key(job),
                          description=take_label(job))


def _table_artifact(job: TakeJob, seed: int | None, timings: dict[str, float]) -> None:
    key = artifacts.take_key(job)
    label = take_label(job)
    steps, cfg = artifacts.describe_effective(job)
    p = job.params
    rows = [
        ("take", label),
        ("file", job.output_path),
        ("prompt", p.prompt),
        ("negative prompt", p.negative_prompt),
        ("seed", seed if seed is not None else p.seed),
        ("steps", steps),
        ("cfg scale", cfg),
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
    if exc.exit_code == ExitCode.OUT_OF_MEMORY:
        tier = TIERS[job.quality_used]
        return (
            f"Out of GPU memory on the {tier.quality.value} tier ({tier.vram_gb} GB, "
            f"{tier.pipeline_id}): {exc.message}"
        )
    return exc.message


class _TakeRun:
    """One reserved take on this worker: where it lives, which Prefect run carries it, and the
    ways it ends (cancelled, failed) recorded in project.json and as events."""

    def __init__(self, job: TakeJob) -> None:
        self.job = job
        self.workspace = Workspace()
        self.store = ProjectStore(self.workspace)
        self.project_dir = self.store.project_dir(job.project_id)
        self.output = self.project_dir / job.output_path
        ctx = TaskRunContext.get()
        self.task_run_id = str(ctx.task_run.id) if ctx else None
        self.flow_run_id = (str(ctx.task_run.flow_run_id)
                            if ctx and ctx.task_run.flow_run_id else None)
        self.result_of: dict[str, Any] = {"output_path": job.output_path, "take_id": job.take_id}
        self.started = time.perf_counter()

    def cancel_asked(self) -> bool:
        return cancel_requested(self.workspace.root, self.job.take_id)

    def rendered_elsewhere(self) -> bool:
        """Another worker holds the take's live lease (a copy of the run delivered twice)."""
        root, take_id = self.workspace.root, self.job.take_id
        age = lease_age(root, take_id)
        return age is not None and age < STALE_AFTER_SECONDS and not holder_gone(root, take_id)

    def on_progress(self, percent: int, step: str, preview_path: str | None) -> None:
        # Called between denoising steps: the runner unwinds and writes nothing.
        if self.cancel_asked():
            raise CancelRequested(self.job.take_id)
        preview = None
        if preview_path:
            preview = (Path(preview_path).resolve()
                       .relative_to(self.project_dir.resolve()).as_posix())
        events.emit(TakeProgress.of_job(self.job, self.task_run_id, progress=percent, step=step,
                                        preview_path=preview))

    def cancelled(self) -> State:
        """The take stopped at the artist's request: no file, recorded `cancelled`, and the
        Prefect task run ends Cancelled."""
        job = self.job
        self.output.unlink(missing_ok=True)
        try:
            cancel_take(self.store, job.project_id, job.node_id, job.take_id)
        except (TakeError, LookupError, ValueError) as exc:
            log.warning("could not record the cancel of %s: %s", job.take_id, exc)
        clear_cancel(self.workspace.root, job.take_id)
        events.emit(TakeCancelled.of_job(job, self.task_run_id))
        return Cancelled(message=f"{take_label(job)} was cancelled")

    def fail(self, message: str) -> None:
        job = self.job
        try:
            fail_take(self.store, job.project_id, job.node_id, job.take_id, message)
        except (TakeError, LookupError, ValueError) as exc:  # project or take gone: still tell
            log.warning("could not record the failure of %s: %s", job.take_id, exc)
        events.emit(TakeFailed.of_job(job, self.task_run_id, error=message))

    def start(self) -> Take | dict[str, Any] | State:
        """Records the take `generating`; what to return instead when it must not render."""
        job = self.job
        if self.cancel_asked():
            return self.cancelled()
        try:
            take = start_take(self.store, job.project_id, job.node_id, job.take_id,
                              task_run_id=self.task_run_id, flow_run_id=self.flow_run_id)
        except TakeError as exc:  # a copy of its run delivered after the take ended
            log.warning("skipping %s (task run %s): %s; nothing rendered", take_label(job),
                        self.task_run_id, exc)
            if exc.status == TakeStatus.cancelled:  # no second read of project.json
                return Cancelled(message=f"{take_label(job)} was cancelled before it started")
            return {**self.result_of, "skipped": str(exc)}
        return take

    def render(self, take: Take, mode: str | None) -> RunResult | State:
        """Runs the started take through its runner and records how it ended."""
        job = self.job
        try:
            events.emit(TakeStarted.of_job(job, self.task_run_id, attempt=take.attempts))
            strategy = strategy_for(job.pipeline_id, mode)
            request = take_request(job, workspace_root=self.workspace.root,
                                   project_dir=self.project_dir)
            try:
                result = strategy.run(request, self.on_progress)
            finally:
                # The live preview has served its purpose once the take ends, either way.
                preview_path_for(self.output).unlink(missing_ok=True)
            if self.cancel_asked():  # asked after the last step
                return self.cancelled()
            result = replace(result, timings={**result.timings,
                                              "total": time.perf_counter() - self.started})
            complete_take(self.store, job.project_id, job.node_id, job.take_id,
                          timings=result.timings, applied=artifacts.effective_settings(job))
            return result
        except RunnerFailed as exc:
            if self.cancel_asked():
                return self.cancelled()
            message = _failure_text(job, exc)
            self.fail(message)
            raise RunnerFailed(message, exc.exit_code) from exc
        except BaseException as exc:  # a bug or an interrupt must not leave it "generating"
            if isinstance(exc, CancelRequested):
                return self.cancelled()
            self.fail(f"{type(exc).__name__}: {exc}")
            raise


def render_take(job: TakeJob, mode: str | None = None) -> dict[str, Any] | State:
    """Runs one reserved take and records it. Raises RunnerFailed when the runner fails;
    returns a Cancelled state when the take was cancelled (before or while it rendered)."""
    run = _TakeRun(job)
    if run.rendered_elsewhere():
        log.warning("skipping %s: another worker is rendering it", take_label(job))
        return {**run.result_of, "skipped": "rendered by another worker"}
    # The lease covers the recording too: a take is never "generating" without a live lease.
    with Lease(run.workspace.root, job.take_id):
        started = run.start()
        if not isinstance(started, Take):
            return started
        result = run.render(started, mode)
    if not isinstance(result, RunResult):
        return result
    _record_artifacts(job, result.seed, result.timings)
    events.emit(TakeSucceeded.of_job(job, run.task_run_id, output_path=job.output_path))
    return {
        **run.result_of,
        "seed": result.seed if result.seed is not None else job.params.seed,
        "loaded_pipeline": result.loaded_pipeline,
    }


_TASK_OPTIONS: dict[str, Any] = {
    "task_run_name": lambda parameters: take_label(TakeJob.model_validate(parameters["job"])),
    "persist_result": True,
}


@task(name="text_to_image_low", **_TASK_OPTIONS)
def text_to_image_low(job: TakeJob) -> dict[str, Any] | State:
    return render_take(job)


@task(name="text_to_image_standard", **_TASK_OPTIONS)
def text_to_image_standard(job: TakeJob) -> dict[str, Any] | State:
    return render_take(job)


@task(name="text_to_image_high", **_TASK_OPTIONS)
def text_to_image_high(job: TakeJob) -> dict[str, Any] | State:
    return render_take(job)


TIER_TASKS: dict[Quality, Task[..., dict[str, Any] | State]] = {
    Quality.low: text_to_image_low,
    Quality.standard: text_to_image_standard,
    Quality.high: text_to_image_high,
}


def tier_task(quality: Quality) -> Task[..., dict[str, Any] | State]:
    return TIER_TASKS[quality]
