"""`batch_takes`: a TD's batch of takes (or a look-development sweep), run as a deployment on a
tier's work pool and started from the Prefect UI's run form or a schedule.

The flow runs in one process, so the tier's pipeline loads once and every take reuses it.
A failed take fails that take only: the others still render, and the run ends with a summary
(done, failed with reasons, skipped) and a contact sheet of every take.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from prefect import Task, flow, get_run_logger, tags
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from pydantic import Field

from runners.gpus import apply_gpu_map
from studio.batch import (
    BatchQuality,
    Sweep,
    display_shot,
    find_project,
    scene_name,
    select_nodes,
    sweep_node,
    take_seeds,
)
from studio.jobs import TakeJob
from studio.manifest import Node, Project
from studio.prepare import prepare_in
from studio.store import ProjectStore
from studio.takes import TakeError, fail_take
from studio.tiers import Quality
from studio.workspace import RENDERS, Workspace
from tasks import artifacts, contact_sheet
from tasks.prefect_retry import is_transient, retry_transient
from tasks.retry import render_options
from tasks.text_to_image import take_label, take_tags, tier_task

CONTACT_SHEETS = f"{RENDERS}/CONTACT_SHEETS"
DEFAULT_CONCURRENCY = 4
PROGRESS_EVERY_S = 1.0
# A batch's take is rendered, recorded and read back by this one process: its result needs no
# storage and a render is never served from a cache (each take is a new image).
BATCH_TASK_OPTIONS: dict[str, Any] = {"persist_result": False, "cache_policy": NO_CACHE}


@dataclass
class PlannedTake:
    node: Node
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TakeOutcome:
    planned: PlannedTake
    status: str  # done | failed | skipped
    label: str
    path: str | None = None
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)


class BatchFailed(RuntimeError):
    """Some takes failed; the summary artifact lists them."""


def plan_takes(nodes: list[Node], takes_per_node: int, seeds: list[int],
               sweep: Sweep, sweep_target: Node | None) -> list[PlannedTake]:
    """Which takes to render, each with its seed (and, in a sweep, its cell's values)."""
    if sweep_target is not None:
        cells = sweep.cells()
        # Without a seed axis every cell shares one seed, so only the swept values differ.
        shared = take_seeds(1, seeds)[0]
        return [PlannedTake(node=sweep_target,
                            seed=cell.get("seed", shared),
                            overrides={k: v for k, v in cell.items() if k != "seed"})
                for cell in cells]
    per_node = take_seeds(len(nodes) * takes_per_node, seeds)
    if seeds:  # listed seeds run in turn within each node, the same for every node
        per_node = take_seeds(takes_per_node, seeds) * len(nodes)
    return [PlannedTake(node=node, seed=per_node[i * takes_per_node + j])
            for i, node in enumerate(nodes) for j in range(takes_per_node)]


def _axis_label(name: str, value: Any) -> str:
    if name == "prompt":
        text = str(value)
        return f"'{text[:40]}...'" if len(text) > 40 else f"'{text}'"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{'cfg' if name == 'cfg_scale' else name} {shown}"


def _grid_labels(sweep: Sweep) -> tuple[int, list[str], list[str]]:
    """Columns, column labels and row labels of a sweep's contact sheet."""
    axes = sweep.axes()
    first_name, first_values = axes[0]
    columns = [_axis_label(first_name, v) for v in first_values]
    rows = [" · ".join(_axis_label(axis, cell[axis]) for axis, _ in axes[1:])
            for cell in sweep.cells()[:: len(first_values)]]
    return len(first_values), columns, rows if len(axes) > 1 else []


def _cell_label(outcome: TakeOutcome) -> str:
    node = outcome.planned.node
    assert node.shot is not None
    take = Path(outcome.path).stem.rsplit("_", 1)[-1] if outcome.path else "-"
    text = f"{display_shot(node.shot.shot)} · {take} · seed {outcome.planned.seed}"
    return text if outcome.status == "done" else f"{text} · {outcome.status.upper()}"


def _name_run(project_name: str, scene: str, count: int, quality: Quality,
              extra_tags: list[str]) -> None:
    """`Project Odyssey · SCENE_01 · 12 takes · standard`, and tags to filter runs by."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    from prefect.client.orchestration import get_client

    name = f"{project_name} · {scene or 'all scenes'} · {count} takes · {quality.value}"
    run_tags = sorted({*ctx.flow_run.tags, *extra_tags})
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, name=name, tags=run_tags)


def _summary(project_id: str, project_name: str, run_label: str, outcomes: list[TakeOutcome],
             sheet_url: str | None) -> str:
    done = [o for o in outcomes if o.status == "done"]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    lines = [f"# {run_label}", "",
             f"**{len(done)} done, {len(failed)} failed, {len(skipped)} skipped** "
             f"of {len(outcomes)} takes in {project_name}.", ""]
    if failed or skipped:
        lines += ["## Failed and skipped", ""]
        lines += [f"- **{o.label}** ({o.status}): {o.reason}" for o in failed + skipped]
        lines.append("")
    if sheet_url:
        lines += ["## Contact sheet", "", f"![contact sheet]({sheet_url})", "",
                  f"[open the contact sheet]({sheet_url})", ""]
    lines += ["## Takes", "", "| take | seed | status | file |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        link = f"[{Path(o.path).name}]({artifacts.file_url(project_id, o.path)})" \
            if o.path and o.status == "done" else (o.path or "")
        lines.append(f"| {o.label} | {o.planned.seed} | {o.status} | {link} |")
    return "\n".join(lines) + "\n"


def _skipped(planned: PlannedTake, reason: str) -> TakeOutcome:
    assert planned.node.shot is not None
    label = f"{display_shot(planned.node.shot.shot)} (seed {planned.seed})"
    return TakeOutcome(planned, "skipped", label, reason=reason)


def _prepare(store: ProjectStore, project_id: str, planned: PlannedTake,
             quality: Quality) -> TakeJob | TakeOutcome:
    """Reserves the take (its number and file); a node that cannot render is skipped."""
    return _prepare_group(store, project_id, [planned], quality)[0]


def _prepare_group(store: ProjectStore, project_id: str, group: list[PlannedTake],
                   quality: Quality) -> list[TakeJob | TakeOutcome]:
    """Reserves these takes, in order, in one edit of project.json (each edit rewrites the
    whole file, every take of the project in it); a node that cannot render is skipped alone."""
    run_id = flow_run.get_id()
    jobs: list[TakeJob | TakeOutcome] = []
    try:
        with store.edit(project_id) as project:
            project_dir = store.project_dir(project_id)
            for planned in group:
                try:
                    jobs.append(prepare_in(project, project_dir, planned.node.id,
                                           quality_requested=quality, quality_used=quality,
                                           seed=planned.seed,
                                           overrides=planned.overrides or None,
                                           flow_run_id=run_id))
                except (ValueError, LookupError) as exc:  # this node cannot render as it is
                    jobs.append(_skipped(planned, str(exc)))
    except (ValueError, LookupError) as exc:  # the project itself: nothing was reserved
        return [_skipped(planned, str(exc)) for planned in group]
    return jobs


def _batch_task(quality: Quality) -> Task[..., Any]:
    """The tier's task as a batch runs it: retried for infrastructure failures only."""
    return tier_task(quality).with_options(**render_options(), **BATCH_TASK_OPTIONS)


def _run_task(job: TakeJob, render: Task[..., Any]) -> Any:
    """The take's task run; a transient Prefect answer (a 503 on a locked SQLite) before the
    take started is retried with our backoff (tasks/prefect_retry.py), not a failed batch."""
    def call() -> Any:
        try:
            with tags(*take_tags(job)):
                return render(job, return_state=True)
        except ConcurrencySlotAcquisitionError as exc:
            # The task-run tags' concurrency check, before the task ran: safe to call again.
            if exc.__cause__ is not None and is_transient(exc.__cause__):
                raise exc.__cause__ from exc
            raise

    return retry_transient(call, f"starting {take_label(job)}")


def _render_one(planned: PlannedTake, job: TakeJob, render: Task[..., Any],
                store: ProjectStore | None = None) -> TakeOutcome:
    assert planned.node.shot is not None
    label = f"{display_shot(planned.node.shot.shot)} · take{job.take_number:02d}"
    try:
        state = _run_task(job, render)
    except Exception as exc:  # Prefect gave up on this take: it fails alone, with the reason
        reason = f"{type(exc).__name__}: {exc}"
        try:
            fail_take(store or ProjectStore(Workspace()), job.project_id, job.node_id,
                      job.take_id, reason)
        except (TakeError, LookupError, ValueError):  # it ended meanwhile: keep that record
            pass
        return TakeOutcome(planned, "failed", label, job.output_path, reason=reason)
    if state.is_completed():
        result = state.result()
        if "skipped" in result:
            return TakeOutcome(planned, "skipped", label, job.output_path, result["skipped"])
        return TakeOutcome(planned, "done", label, job.output_path, result=result)
    return TakeOutcome(planned, "failed", label, job.output_path,
                       reason=state.message or state.name)


def batch_concurrency() -> int:
    """Takes in flight at once (STUDIO_BATCH_CONCURRENCY, default 4; 1 = one after another).

    Only their orchestration overlaps (task runs, events, artifacts, project.json): in process,
    the render itself holds the tier pipeline's lock (runners/flux/generation.py), so one GPU
    never renders two takes at once. A runner in a subprocess or a container has no such lock:
    there takes stay one after another.
    """
    raw = os.environ.get("STUDIO_BATCH_CONCURRENCY", "").strip()
    try:
        value = int(raw) if raw else DEFAULT_CONCURRENCY
    except ValueError:
        raise ValueError(f"STUDIO_BATCH_CONCURRENCY must be a whole number, not {raw!r}") \
            from None
    if os.environ.get("STUDIO_RUNNER_MODE", "in-process") != "in-process":
        return 1
    return max(1, value)


def _render_all(store: ProjectStore, project_id: str, planned: list[PlannedTake],
                quality: Quality, on_done: Callable[[int, TakeOutcome, float], None],
                render: Callable[[PlannedTake, TakeJob, Task[..., Any]], TakeOutcome]
                = _render_one,
                ) -> list[TakeOutcome]:
    """Every planned take, a bounded number in flight; outcomes in the planned order.

    Takes are reserved here in the planned order (take numbers follow the plan), a slot's worth
    per edit of project.json and never more than that ahead of the takes in flight. A reserved
    take carries the batch's flow run, so the studio API's reconciler leaves it to the batch.
    """
    task = _batch_task(quality)
    slots = batch_concurrency()
    outcomes: list[TakeOutcome | None] = [None] * len(planned)
    ready: deque[tuple[int, TakeJob]] = deque()  # reserved, waiting for a slot
    next_index = 0  # the first planned take not reserved yet
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="take") as pool:
        running: dict[Future[TakeOutcome], tuple[int, float]] = {}

        def collect(block: bool) -> None:
            finished, _ = wait(running, return_when=FIRST_COMPLETED,
                               timeout=None if block else 0)
            for future in finished:
                index, started = running.pop(future)
                outcomes[index] = future.result()
                on_done(index, outcomes[index], time.perf_counter() - started)

        def reserve_next() -> None:
            # The first take alone (it starts loading the pipeline at once), then a slot's worth
            # per edit of project.json: one rewrite of the file for `slots` reservations.
            nonlocal next_index
            group = range(next_index, min(len(planned), next_index + (slots if next_index else 1)))
            next_index = group.stop
            started = time.perf_counter()
            jobs = _prepare_group(store, project_id, [planned[i] for i in group], quality)
            for index, job in zip(group, jobs, strict=True):
                if isinstance(job, TakeOutcome):
                    outcomes[index] = job
                    on_done(index, job, time.perf_counter() - started)
                else:
                    ready.append((index, job))

        while next_index < len(planned) or ready:
            if not ready:
                reserve_next()
                continue
            # The first take alone: it loads the tier's pipeline, which the others would only
            # queue behind (counting the wait as loading).
            while len(running) >= (slots if any(outcomes) else 1):
                collect(block=True)
            index, job = ready.popleft()
            # Each take's thread runs in a copy of this context: the flow run, its settings.
            context = contextvars.copy_context()
            running[pool.submit(context.run, render, planned[index], job, task)] = (
                index, time.perf_counter())
            collect(block=False)
        while running:
            collect(block=True)
    return [o for o in outcomes if o is not None]


class _Progress:
    """The batch's progress artifact, updated at most every PROGRESS_EVERY_S (and at the end):
    one API call per take would cost more than the bar is worth on a 1,000-take batch."""

    def __init__(self, key: str, run_label: str, total: int) -> None:
        self.run_label, self.total, self.done = run_label, total, 0
        self.last = time.monotonic()
        self.id = create_progress_artifact(progress=0.0, key=key,
                                           description=f"{run_label}: 0 of {total}")

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            update_progress_artifact(self.id, progress=100.0 * self.done / self.total,
                                     description=f"{self.run_label}: {self.done} of "
                                                 f"{self.total}")


# Mutable defaults are safe here: Prefect validates parameters into new objects per run.
@flow(name="batch_takes", log_prints=True, persist_result=True)
def batch_takes(
    project: str,
    scene: str = "",
    shots: list[str] = [],  # noqa: B006
    takes_per_node: Annotated[int, Field(ge=1, le=100)] = 1,
    seeds: list[int] = [],  # noqa: B006
    quality: BatchQuality = BatchQuality.project,
    sweep: Sweep = Sweep(),  # noqa: B008
) -> dict[str, Any]:
    """Renders takes of a project's Text-to-Image nodes, or a sweep over one node.

    Args:
        project: The project's name as the canvas shows it (e.g. Project Odyssey) or its id.
        scene: Only this scene, e.g. SCENE-01. Empty: every scene.
        shots: Only these shots, e.g. ["SHOT-010", "SHOT-020"] (SHOT_010 works too). Empty:
            every shot of the scene.
        takes_per_node: How many takes each selected node renders (1-100). Ignored by a sweep.
        seeds: Seeds used in turn for each node's takes, e.g. [1, 2, 3]. Empty: a random seed
            per take, so no two takes repeat.
        quality: The tier to render at. `project` uses the project's own quality setting.
        sweep: Look development: every combination of these seeds, CFG scales, steps and
            prompts for the one node of `shot`, laid out as a labelled grid. Leave `shot` empty
            for a normal batch.
    """
    logger = get_run_logger()
    store = ProjectStore(Workspace())
    found = find_project(store, project)
    q = quality.resolve(found)
    gpu = apply_gpu_map(q)  # before the first take loads torch
    if gpu is not None:
        logger.info("rendering on %s (STUDIO_GPUS)", gpu.label())
    target = sweep_node(found, sweep) if sweep.active else None
    nodes = [target] if target is not None else select_nodes(found, scene, shots)
    planned = plan_takes(nodes, takes_per_node, seeds, sweep, target)
    # Named as the manifest and the render folders name it (SCENE_01), whatever was typed.
    scene_tag = (target.shot.scene if target is not None and target.shot
                 else scene_name(scene) if scene.strip() else "")
    run_label = f"{found.name} · {scene_tag or 'all scenes'} · {len(planned)} takes · {q.value}"
    _name_run(found.name, scene_tag, len(planned), q,
              [f"project:{found.id}", f"scene:{scene_tag or 'all'}", f"quality:{q.value}",
               *(["sweep"] if target is not None else [])])
    logger.info("%s: %d node(s), %d take(s) at quality %s%s", found.name, len(nodes),
                len(planned), q.value, " (sweep)" if target is not None else "")

    progress = _Progress(artifacts.batch_key(found.id, "progress"), run_label, len(planned))
    finished = [0]

    def on_done(index: int, outcome: TakeOutcome, seconds: float) -> None:
        finished[0] += 1
        if outcome.status == "done":
            logger.info("take %d/%d %s: done in %.1f s", finished[0], len(planned),
                        outcome.label, seconds)
        else:
            logger.warning("take %d/%d %s: %s: %s", finished[0], len(planned), outcome.label,
                           outcome.status.upper(), outcome.reason)
        progress.advance()

    outcomes = _render_all(store, found.id, planned, q, on_done)

    sheet_rel = _publish(store, found, run_label, outcomes, sweep if target else None)
    done = sum(o.status == "done" for o in outcomes)
    failed = [o for o in outcomes if o.status != "done"]
    logger.info("%s: %d done, %d failed or skipped; contact sheet %s", run_label, done,
                len(failed), sheet_rel)
    if failed:
        reasons = "; ".join(f"{o.label}: {o.reason}" for o in failed)
        raise BatchFailed(f"{len(failed)} of {len(outcomes)} takes did not render ({reasons}); "
                          f"{done} done, contact sheet {sheet_rel}")
    return {"project": found.id, "contact_sheet": sheet_rel,
            "takes": [o.result for o in outcomes]}


def _publish(store: ProjectStore, project: Project, run_label: str,
             outcomes: list[TakeOutcome], sweep: Sweep | None) -> str:
    """The contact sheet and the summary, as files and artifacts; returns the sheet's path."""
    sheet_rel = _write_contact_sheet(store, project.id, outcomes, sweep)
    sheet_url = artifacts.file_url(project.id, sheet_rel)
    create_image_artifact(image_url=sheet_url, key=artifacts.batch_key(project.id, "contact-sheet"),
                          description=f"{run_label}: contact sheet ({sheet_rel})")
    summary = _summary(project.id, project.name, run_label, outcomes, sheet_url)
    create_markdown_artifact(markdown=summary, key=artifacts.batch_key(project.id, "summary"),
                             description=run_label)
    return sheet_rel


def _write_contact_sheet(store: ProjectStore, project_id: str, outcomes: list[TakeOutcome],
                         sweep: Sweep | None) -> str:
    """The sheet's path relative to the project, under 03_Renders/CONTACT_SHEETS/."""
    ctx = FlowRunContext.get()
    run = str(ctx.flow_run.id)[:8] if ctx and ctx.flow_run else "local"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    rel = f"{CONTACT_SHEETS}/batch_{stamp}_{run}.png"
    project_dir = store.project_dir(project_id)
    cells = [contact_sheet.Cell(_cell_label(o), project_dir / o.path
                                if o.status == "done" and o.path else None) for o in outcomes]
    if sweep is not None:
        columns, column_labels, row_labels = _grid_labels(sweep)
        contact_sheet.render(cells, project_dir / rel, columns=columns,
                             column_labels=column_labels, row_labels=row_labels)
    else:
        contact_sheet.render(cells, project_dir / rel)
    return rel


