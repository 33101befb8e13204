"""Reconciliation: no take stays `queued` or `generating` forever, and none runs twice.

Every pass rebuilds the tiers' queues from the manifests, gathers the facts of each take in
flight (its task run's state from Prefect only when it could have been lost) and acts on
api.reconcile_rules.decide:

- Prefect keeps the queue of background tasks in the server's memory: after a server restart
  a run delivered to no worker stays SCHEDULED and is never delivered (notes/prefect-facts.md).
  Such a run is proposed to Prefect as SCHEDULED again — the *same* run, which puts it back on
  the server's queue; re-using it is what keeps "never twice": a copy delivered after the run
  completed is refused by Prefect ("This run is already completed").
- A take whose worker died mid-render (its lease) is retried once as a new task run (same take
  number and path, the dead run set to Crashed with the reason), then failed.
- A take waits for its tier's worker as long as it takes: it never fails for want of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Crashed, Scheduled

from api.reconcile_rules import LOST_AFTER_SECONDS, Action, Decision, Facts, Unknown, decide
from api.relay import Relay
from studio.jobs import TakeJob
from studio.manifest import Project, Take, TakeStatus
from studio.store import ProjectStore
from studio.take_events import TakeCancelled, TakeFailed, TakeQueued
from studio.takes import (
    TakeError,
    cancel_take,
    claim_hand_out,
    fail_take,
    record_submission,
    retry_take,
    take_job,
)
from studio.tiers import Quality
from tasks.cancel import cancel_requested, clear_cancel
from tasks.prefect_retry import aretry_transient
from tasks.recovery import clear_leftovers, is_abandoned
from tasks.submit import submit_take

log = logging.getLogger(__name__)

# A pass retries a Prefect call this long at most: while Prefect is down the next pass (a
# second later) asks again, and a pass asleep in a minutes-long backoff would hold up every
# other take (dead workers' retries, lost runs, cancels) and hand out late once Prefect is back.
PASS_RETRY_SECONDS = 5.0
# A worker records a take, then creates its artifacts and ends its run: a tier counts as busy
# while its last ended take's run is not final, for at most this long (a run whose worker died
# meanwhile may stay RUNNING in Prefect).
FINISHING_SECONDS = 60.0


def job_for(store: ProjectStore, project_id: str, node_id: str, take: Take) -> TakeJob:
    """The job of a take already reserved, rebuilt from its manifest entry and its node."""
    node = store.load(project_id).get_node(node_id)
    if node is None:
        raise TakeError(f"project {project_id} has no node {node_id!r}")
    return take_job(project_id, node, take)


class _PassClient:
    """One Prefect client for a whole reconcile pass, opened at its first use: a client per
    call builds a TLS context each time, which holds the event loop under load."""

    def __init__(self) -> None:
        self.client: PrefectClient | None = None

    async def get(self) -> PrefectClient:
        if self.client is None:
            client = get_client()
            await client.__aenter__()
            self.client = client
        return self.client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


_PASS: ContextVar[_PassClient | None] = ContextVar("reconcile_pass_client", default=None)


@asynccontextmanager
async def _prefect() -> AsyncIterator[PrefectClient]:
    shared = _PASS.get()
    if shared is None:
        async with get_client() as client:
            yield client
    else:
        yield await shared.get()


async def _task_run_state(task_run_id: str) -> State | None:
    async with _prefect() as client:
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
        async with _prefect() as client:
            result = await client.set_task_run_state(uuid.UUID(task_run_id), again, force=False)
        return result.status.value == "ACCEPT"

    return await aretry_transient(propose, f"handing task run {task_run_id} out again",
                                  PASS_RETRY_SECONDS)


async def _set_state(task_run_id: str, state: State) -> None:
    """Best effort, forced: a dead attempt's run must not stay RUNNING, nor a cancelled or
    failed take's run be picked up later."""
    try:
        async with _prefect() as client:
            await client.set_task_run_state(uuid.UUID(task_run_id), state, force=True)
    except Exception as exc:
        log.info("could not set task run %s to %s: %s", task_run_id, state.name, exc)


def _dropped_run(decision: Decision, state: State | None) -> bool:
    """A new run for a take whose run a worker took (not final in Prefect) but never started."""
    return decision.action == Action.submit and state is not None and not state.is_final()


def _age(moment: datetime, now: datetime | None = None) -> float:
    return ((now or datetime.now(UTC)) - moment).total_seconds()


class Reconciler:
    def __init__(self, store: ProjectStore, relay: Relay, *, interval: float,
                 lost_after: float = LOST_AFTER_SECONDS) -> None:
        self.store = store
        self.relay = relay
        self.tiers = relay.tiers
        self.interval = interval
        self.lost_after = lost_after  # STUDIO_LOST_AFTER_SECONDS
        self._lock = asyncio.Lock()
        # Each pass judges every take against the tiers as they were when it began: a worker
        # that picks up the first run handed out again must not leave the others, lost from the
        # same queue, waiting for its next idle spell (4 s after each take).
        self._pass_at: datetime | None = None
        self._tiers_at: dict[Quality, tuple[float, float]] = {}
        # Per tier, the take that ended last (its end, its task run): a worker is still busy
        # with a take after recording it (artifacts, events, its run's final state) and only
        # then takes the next run, so the tier's idle time counts from its run's end in Prefect.
        self._last_ended: dict[Quality, tuple[datetime, str | None]] = {}
        self._prefect_idle: dict[Quality, float] = {}
        relay.on_reconnect.append(self.after_reconnect)
        relay.tiers.on_state_change.append(self._tiers_changed)

    async def run(self) -> None:
        # The first pass at once: a fresh API picks up what a stopped stack left queued.
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile pass failed")
            await asyncio.sleep(self.interval)

    async def after_reconnect(self, disconnected_at: datetime) -> None:
        # A dropped event stream says nothing about Prefect's queue: decide from its state.
        await self.reconcile()

    async def _tiers_changed(self) -> None:
        pass  # the next pass (every `interval`) sees the new worker; nothing to hurry

    async def reconcile(self) -> list[str]:
        """One pass over every project; returns what it did, one line per take."""
        async with self._lock:
            shared = _PassClient()
            token = _PASS.set(shared)
            try:
                return await self._pass()
            finally:
                _PASS.reset(token)
                await shared.close()

    async def _pass(self) -> list[str]:
        done: list[str] = []
        read_at = time.monotonic()
        self._pass_at = datetime.now(UTC)
        projects = await asyncio.to_thread(self.store.list)
        await self.tiers.rebuild(projects, read_at)
        self._tiers_at = {q: (self.tiers.online_for(q), self.tiers.idle_for(q))
                          for q in Quality}
        self._last_ended = _last_ended(projects)
        self._prefect_idle = {}
        for project in projects:
            for node in project.nodes:
                for take in node.takes:
                    if take.status in (TakeStatus.queued, TakeStatus.generating):
                        line = await self._one(project.id, node.id, take)
                        if line:
                            done.append(line)
            # Results whose event went missing reach open sockets anyway.
            await self.relay.resync(project.id, min_age=3.0)
        for line in done:
            log.info("reconcile: %s", line)
        return done

    def facts(self, take: Take) -> Facts:
        root = self.store.workspace.root
        tier = take.quality_used
        online_for, idle_for = self._tiers_at.get(
            tier, (self.tiers.online_for(tier), self.tiers.idle_for(tier)))
        if tier in self._last_ended:  # the manifests know of work its events did not bring
            idle_for = min(idle_for, _age(self._last_ended[tier][0], self._pass_at))
        return Facts(
            status=take.status, has_run=take.task_run_id is not None,
            run_state=Unknown.not_asked, waited=_age(take.created_at, self._pass_at),
            tier_online_for=online_for, tier_idle_for=idle_for,
            worker_gone=is_abandoned(root, take, _stale_after()),
            cancel_requested=cancel_requested(root, take.id), attempts=take.attempts,
            hand_outs=take.hand_outs, submitting=take.id in self.relay.handing_out,
            batch=take.flow_run_id is not None)

    async def _one(self, project_id: str, node_id: str, take: Take) -> str | None:
        facts = await asyncio.to_thread(self.facts, take)
        decision = decide(facts, lost_after=self.lost_after)
        state: State | None = None
        if decision.action == Action.ask:
            try:
                state = await _task_run_state(take.task_run_id or "")
            except Exception as exc:
                log.info("reconcile: Prefect unavailable (%s); next pass", exc)
                return None
            waited = facts.waited if state is None else _age(
                max(take.created_at, state.timestamp), self._pass_at)
            facts = replace(facts, run_state=None if state is None else state.type,
                            waited=waited)
            decision = decide(facts, lost_after=self.lost_after)
            if decision.action == Action.requeue or _dropped_run(decision, state):
                # "Idle" from Prefect's own state too: a dropped event stream or a slow
                # worker between two takes must not pass for a lost queue or a dropped run.
                idle = await self._tier_idle_in_prefect(take.quality_used)
                facts = replace(facts, tier_idle_for=min(facts.tier_idle_for, idle))
                decision = decide(facts, lost_after=self.lost_after)
        if decision.action in (Action.wait, Action.ask):
            return None
        # A pass over many takes reads them all first and acts seconds later: a take that moved
        # on meanwhile (it completed, so its lease is gone and it looks abandoned) is left to
        # the next pass, which sees it as it is now.
        if not await asyncio.to_thread(self._unchanged, project_id, node_id, take):
            return None
        return await self._act(project_id, node_id, take, decision, state)

    async def _tier_idle_in_prefect(self, tier: Quality) -> float:
        """Seconds since the task run of the tier's last ended take reached its final state
        in Prefect (0 while it has not: its worker is still finishing it); once per pass."""
        if tier not in self._prefect_idle:
            idle = float("inf")
            ended = self._last_ended.get(tier)
            if ended is not None and ended[1]:
                try:
                    state = await _task_run_state(ended[1])
                except Exception:  # Prefect unreachable: nothing is judged lost now
                    state = None
                    idle = 0.0
                if state is not None:
                    since_ended = _age(ended[0], self._pass_at)
                    if state.is_final():
                        idle = _age(state.timestamp, self._pass_at)
                    else:  # still finishing; a run left RUNNING by a dead worker is ignored
                        idle = 0.0 if since_ended < FINISHING_SECONDS else since_ended
            self._prefect_idle[tier] = idle
        return self._prefect_idle[tier]

    async def _act(self, project_id: str, node_id: str, take: Take, decision: Decision,
                   state: State | None) -> str | None:
        where = f"{project_id}/{node_id} take {take.number}"
        action, reason = decision.action, decision.reason
        if action == Action.cancel:
            return await self._cancel(project_id, node_id, take, reason, where)
        if action == Action.fail:
            if take.status == TakeStatus.generating:
                await asyncio.to_thread(clear_leftovers, self.store, project_id, take)
                if take.task_run_id:
                    await _set_state(take.task_run_id, Crashed(message=reason))
                reason = (f"the worker stopped while rendering this take ({reason}); "
                          "it was retried once")
            elif take.task_run_id:
                await _set_state(take.task_run_id, Cancelled(message=reason))
                reason = f"this take was not started: {reason}"
            return await self._fail(project_id, node_id, take, reason, where)
        if action == Action.retry:
            if take.task_run_id:
                await _set_state(take.task_run_id, Crashed(message=reason))
            await asyncio.to_thread(clear_leftovers, self.store, project_id, take)
            try:
                take = await asyncio.to_thread(retry_take, self.store, project_id, node_id,
                                               take.id)
            except TakeError:
                return None
            await self.tiers.enqueue(take.quality_used, project_id, node_id, take.id)
            return await self._submit(project_id, node_id, take, where,
                                      f"retried ({reason})", attempt=take.attempts + 1)
        # submit / requeue: claim the hand-out in project.json first; of several API
        # processes, one wins.
        if not await asyncio.to_thread(self._claim, project_id, node_id, take):
            return None
        if _dropped_run(decision, state) and take.task_run_id:
            # A run its worker took and dropped stays PENDING in Prefect: end it, say why.
            await _set_state(take.task_run_id, Crashed(message=reason))
        if action == Action.requeue and state is not None and take.task_run_id:
            try:
                if not await _requeue(take.task_run_id, state):
                    return None  # it started meanwhile
            except Exception as exc:
                log.info("reconcile: could not requeue %s: %s", where, exc)
                return None
            await self._announce_queued(project_id, node_id, take, take.task_run_id)
            return f"{where}: handed out again: {reason} (task run {take.task_run_id})"
        return await self._submit(project_id, node_id, take, where, reason)

    async def _submit(self, project_id: str, node_id: str, take: Take, where: str, why: str,
                      attempt: int | None = None) -> str | None:
        try:
            job = await asyncio.to_thread(job_for, self.store, project_id, node_id, take)
            task_run_id = await asyncio.to_thread(submit_take, job, PASS_RETRY_SECONDS)
        except Exception as exc:  # Prefect down: the take stays queued; the next pass tries
            log.info("reconcile: could not hand out %s: %s", where, exc)
            return None
        await asyncio.to_thread(self._record_run, project_id, node_id, take.id, task_run_id)
        await self._announce_queued(project_id, node_id, take, task_run_id, attempt)
        return f"{where}: handed out: {why} (task run {task_run_id})"

    async def _announce_queued(self, project_id: str, node_id: str, take: Take,
                               task_run_id: str, attempt: int | None = None) -> None:
        if not await asyncio.to_thread(self._still_queued, project_id, node_id, take.id):
            return  # a worker started it meanwhile: no "queued" after its "generating"
        await self.tiers.enqueue(take.quality_used, project_id, node_id, take.id)
        self.relay.track(project_id, node_id, take.id)
        await self.relay.publish_state(project_id, node_id, take.id, task_run_id,
                                       place=self.relay.place(take.quality_used, take.id),
                                       attempt=attempt)
        self.relay.emit(TakeQueued.of_take(project_id, node_id, take, task_run_id,
                                           why="requeued"))

    async def _cancel(self, project_id: str, node_id: str, take: Take, reason: str,
                      where: str) -> str | None:
        try:
            await asyncio.to_thread(cancel_take, self.store, project_id, node_id, take.id)
        except TakeError:
            return None
        if take.status == TakeStatus.generating:
            await asyncio.to_thread(clear_leftovers, self.store, project_id, take)
        clear_cancel(self.store.workspace.root, take.id)
        if take.task_run_id:
            await _set_state(take.task_run_id, Cancelled(message=reason))
        await self.relay.announce_cancelled(project_id, node_id, take.id, take.task_run_id)
        self.relay.emit(TakeCancelled.of_take(project_id, node_id, take, take.task_run_id))
        return f"{where}: cancelled ({reason})"

    def _current(self, project_id: str, node_id: str, take_id: str) -> Take | None:
        node = self.store.load(project_id).get_node(node_id)
        return node.get_take(take_id) if node else None

    def _unchanged(self, project_id: str, node_id: str, take: Take) -> bool:
        now = self._current(project_id, node_id, take.id)
        return now is not None and (now.status, now.attempts, now.hand_outs, now.task_run_id) \
            == (take.status, take.attempts, take.hand_outs, take.task_run_id)

    def _still_queued(self, project_id: str, node_id: str, take_id: str) -> bool:
        take = self._current(project_id, node_id, take_id)
        return take is not None and take.status == TakeStatus.queued

    def _claim(self, project_id: str, node_id: str, take: Take) -> bool:
        return claim_hand_out(self.store, project_id, node_id, take)

    def _record_run(self, project_id: str, node_id: str, take_id: str, task_run_id: str) -> None:
        record_submission(self.store, project_id, node_id, take_id, task_run_id, again=True)

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
        self.relay.emit(TakeFailed.of_take(project_id, node_id, take, take.task_run_id,
                                           error=reason))


def _last_ended(projects: list[Project]) -> dict[Quality, tuple[datetime, str | None]]:
    """Per tier, when its last take ended (completed, failed, cancelled) and its task run."""
    last: dict[Quality, tuple[datetime, str | None]] = {}
    for project in projects:
        for node in project.nodes:
            for take in node.takes:
                if take.finished_at is None:
                    continue
                known = last.get(take.quality_used)
                if known is None or take.finished_at > known[0]:
                    last[take.quality_used] = (take.finished_at, take.task_run_id)
    return last


def _stale_after() -> float:
    from tasks.leases import STALE_AFTER_SECONDS

    return STALE_AFTER_SECONDS
