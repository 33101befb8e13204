"""Reconciliation: no take stays `queued` or `generating` forever, and none runs twice.

Prefect keeps the queue of background tasks in the server's memory: after a server restart a
task run delivered to no worker stays SCHEDULED and is never delivered (notes/prefect-facts.md).
For such a take the reconciler proposes the *same* task run to Prefect as SCHEDULED again,
which puts it back on the server's queue (Prefect's EnqueueScheduledTasks rule). Re-using the
run, not making a new one, is what keeps "never twice": a copy delivered after the run
completed is refused by Prefect ("This run is already completed").

When the stack starts Prefect's task API itself (the production profile), it says when in
STUDIO_PREFECT_STARTED_AT: a take handed out before then was lost with that process's queue and
is handed out again at the first pass, not after `queue_timeout_seconds`.

A take is handed out again once (`attempts` 0 -> 1 while queued); lost again, or still not
started after `queue_timeout_seconds`, it fails with the reason. A `generating` take whose
worker stopped touching its lease fails through tasks.recovery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Scheduled

from api.relay import QUEUED, Relay
from studio.jobs import GenerationParams, TakeJob
from studio.manifest import Take, TakeStatus
from studio.store import ProjectStore
from studio.takes import TakeError, fail_take
from tasks import events
from tasks.events import take_resource
from tasks.recovery import fail_abandoned_takes
from tasks.retry import aretry_transient
from tasks.submit import submit_take

log = logging.getLogger(__name__)

MAX_HAND_OUTS = 2  # the first submission and one more
CHECK_AFTER_SECONDS = 30.0  # a queued take this old has its task run's state checked


def job_for(project_id: str, node_id: str, take: Take) -> TakeJob:
    """The job of a take already reserved, rebuilt from its manifest entry."""
    return TakeJob(
        project_id=project_id, node_id=node_id, take_id=take.id, take_number=take.number,
        output_path=take.path, quality_requested=take.quality_requested,
        quality_used=take.quality_used, pipeline_id=take.pipeline_id,
        params=GenerationParams.model_validate(take.params),
    )


async def _task_run_state(task_run_id: str) -> State | None:
    async with get_client() as client:
        try:
            run = await client.read_task_run(uuid.UUID(task_run_id))
        except ObjectNotFound:
            return None
    return run.state


async def _requeue(task_run_id: str, state: State) -> bool:
    """Put the same task run back on the server's queue; False if Prefect refuses."""
    again = Scheduled()
    again.state_details.deferred = True
    again.state_details.task_parameters_id = state.state_details.task_parameters_id

    async def propose() -> bool:
        async with get_client() as client:
            result = await client.set_task_run_state(uuid.UUID(task_run_id), again, force=False)
        return result.status.value == "ACCEPT"

    return await aretry_transient(propose, f"handing task run {task_run_id} out again")


async def _cancel(task_run_id: str) -> None:
    """Best effort: a failed take's run should not be picked up later."""
    try:
        async with get_client() as client:
            await client.set_task_run_state(uuid.UUID(task_run_id), Cancelled(), force=False)
    except Exception as exc:
        log.info("could not cancel task run %s: %s", task_run_id, exc)


def prefect_started_at() -> datetime | None:
    """When the Prefect API process that holds the task queue started, if the stack said so."""
    raw = os.environ.get("STUDIO_PREFECT_STARTED_AT")
    return datetime.fromisoformat(raw) if raw else None


class Reconciler:
    def __init__(self, store: ProjectStore, relay: Relay, *, queue_timeout: float,
                 interval: float) -> None:
        self.store = store
        self.relay = relay
        self.queue_timeout = queue_timeout
        self.interval = interval
        self._lock = asyncio.Lock()
        self.prefect_started_at = prefect_started_at()
        relay.on_reconnect.append(self.after_restart)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed")

    async def after_restart(self, disconnected_at: datetime) -> None:
        await self.reconcile(restart_before=disconnected_at)

    async def reconcile(self, restart_before: datetime | None = None) -> list[str]:
        """One pass over every project; returns what it did, one line per take.

        restart_before: the Prefect server (probably) restarted after this moment, so every
        take handed out before it and not started was lost from the server's queue.
        """
        if restart_before is None:
            restart_before = self.prefect_started_at
        async with self._lock:
            done: list[str] = []
            for project in await asyncio.to_thread(self.store.list):
                done += await self._abandoned(project.id)
                for node in project.nodes:
                    for take in node.takes:
                        if take.status == TakeStatus.queued:
                            line = await self._queued(project.id, node.id, take, restart_before)
                            if line:
                                done.append(line)
                # Results whose event went missing reach open sockets anyway.
                await self.relay.resync(project.id, min_age=3.0)
            for line in done:
                log.info("reconcile: %s", line)
            return done

    async def _abandoned(self, project_id: str) -> list[str]:
        failed = await asyncio.to_thread(fail_abandoned_takes, self.store, project_id)
        project = await asyncio.to_thread(self.store.load, project_id) if failed else None
        lines = []
        for take in failed:
            node_id = next(n.id for n in project.nodes if n.get_take(take.id)) if project else ""
            await self._announce_failed(project_id, node_id, take, take.error or "")
            lines.append(f"{project_id}/{node_id} take {take.number}: {take.error}")
        return lines

    async def _queued(self, project_id: str, node_id: str, take: Take,
                      restart_before: datetime | None) -> str | None:
        where = f"{project_id}/{node_id} take {take.number}"
        tier = take.quality_used.value

        def overdue(handed_out: datetime) -> tuple[float, bool, bool]:
            waited = (datetime.now(UTC) - handed_out).total_seconds()
            lost = restart_before is not None and handed_out < restart_before
            return waited, waited > self.queue_timeout, lost

        waited, timed_out, lost = overdue(take.created_at)
        if take.task_run_id is None:  # reserved, never submitted (its dispatcher died)
            if timed_out:
                return await self._fail(project_id, node_id, take,
                                        f"this take was never handed to a worker "
                                        f"(queued {waited:.0f} s ago)", where)
            return None
        # Past a short grace, ask Prefect: a run that died before the take started (e.g. its
        # worker could not open the project) is reported now, not at the queue timeout.
        if not (timed_out or lost or waited > min(CHECK_AFTER_SECONDS, self.queue_timeout)):
            return None
        try:
            state = await _task_run_state(take.task_run_id)
        except Exception as exc:
            log.info("reconcile: Prefect unavailable (%s); next pass", exc)
            return None
        if state is not None and state.type != StateType.SCHEDULED:
            if state.type in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED):
                return await self._fail(project_id, node_id, take,
                                        f"the task run ended {state.name} before the take "
                                        f"started: {state.message or 'no message'}", where)
            return None  # running or finishing: the worker records the take itself
        if state is None and not (timed_out or lost):
            return None
        if state is not None:
            # The SCHEDULED state's time is when it was last handed out (by any API process).
            waited, timed_out, lost = overdue(max(take.created_at, state.timestamp))
            if not (timed_out or lost):
                return None

        if take.attempts + 1 >= MAX_HAND_OUTS:
            reason = ("lost again by a Prefect server restart" if lost else
                      f"no {tier} task worker started it in {waited:.0f} s")
            await _cancel(take.task_run_id)
            return await self._fail(
                project_id, node_id, take,
                f"this take was not started: {reason}, after being handed out "
                f"{take.attempts + 1} times; is `studio worker --tier {tier}` running?",
                where)

        # Claim the hand-out in project.json first: of several API processes, one wins.
        if not await asyncio.to_thread(self._claim, project_id, node_id, take):
            return None
        try:
            if state is None:  # the server no longer knows the run (a new database)
                job = job_for(project_id, node_id, take)
                task_run_id = await asyncio.to_thread(submit_take, job)
                await asyncio.to_thread(self._record_run, project_id, node_id, take.id,
                                        task_run_id)
            elif not await _requeue(take.task_run_id, state):
                return None  # it started meanwhile
            else:
                task_run_id = take.task_run_id
        except Exception as exc:
            return await self._fail(project_id, node_id, take,
                                    f"this take could not be handed out again: {exc}", where)
        await self.relay.publish_state(project_id, node_id, take.id, task_run_id)
        self._emit(QUEUED, project_id, node_id, take, task_run_id, why="requeued")
        why = "after a Prefect server restart" if lost else f"after {waited:.0f} s"
        return f"{where}: handed out again {why} (task run {task_run_id})"

    def _claim(self, project_id: str, node_id: str, take: Take) -> bool:
        with self.store.edit(project_id) as project:
            node = project.get_node(node_id)
            current = node.get_take(take.id) if node else None
            if (current is None or current.status != TakeStatus.queued
                    or current.attempts != take.attempts):
                return False
            current.attempts += 1
        return True

    def _record_run(self, project_id: str, node_id: str, take_id: str, task_run_id: str) -> None:
        with self.store.edit(project_id) as project:
            node = project.get_node(node_id)
            take = node.get_take(take_id) if node else None
            if take is not None and take.status == TakeStatus.queued:
                take.task_run_id = task_run_id

    async def _fail(self, project_id: str, node_id: str, take: Take, reason: str,
                    where: str) -> str | None:
        try:
            failed = await asyncio.to_thread(fail_take, self.store, project_id, node_id,
                                             take.id, reason)
        except TakeError:
            return None  # it completed meanwhile
        await self._announce_failed(project_id, node_id, failed, reason)
        return f"{where}: failed: {reason}"

    async def _announce_failed(self, project_id: str, node_id: str, take: Take,
                               reason: str) -> None:
        # Locally at once, and to the other API processes through the event stream.
        await self.relay.announce_failure(project_id, node_id, take.id, take.task_run_id, reason)
        self._emit(events.FAILED, project_id, node_id, take, take.task_run_id, error=reason)

    def _emit(self, name: str, project_id: str, node_id: str, take: Take,
              task_run_id: str | None, **payload: str) -> None:
        event_id = uuid.uuid4()
        self.relay.mark_seen(event_id)
        try:
            emit_event(event=name, id=event_id, payload=payload,
                       resource=take_resource(job_for(project_id, node_id, take), task_run_id))
        except Exception as exc:  # Prefect down: the other processes re-sync from project.json
            log.info("could not emit %s: %s", name, exc)
