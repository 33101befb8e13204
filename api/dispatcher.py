"""The dispatcher (spec 3.1): a Generate click -> tier -> reserved take -> a warm task worker.

Quality comes from project.json and maps to a tier (studio.tiers). A click is never refused for
want of a worker: the take is reserved and handed to Prefect anyway, whose queue holds it for a
worker that connects later, and the node shows `queued` with its place in the tier's queue. A
lower tier is used only as the project's fallback policy allows (api.tiers.choose_tier). The
output path comes from the take reservation, never from the client.

project.json is read twice per click: once to check the node, pick the tier and reserve the
take (one locked edit), once to record the task run Prefect gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from api.hub import Hub, Message
from api.messages import Error, QualityFallback, server_message
from api.relay import Relay
from api.tiers import Tiers, TierView, choose_tier
from api.views import node_state_message
from studio.graph import GraphError
from studio.jobs import TakeJob
from studio.manifest import ManifestError, Project
from studio.nodes import TextToImage
from studio.prepare import prepare_in
from studio.store import ProjectNotFound, ProjectStore
from studio.take_events import TakeQueued
from studio.takes import record_submission
from studio.tiers import Quality
from tasks.submit import submit_take

log = logging.getLogger(__name__)

Reply = Callable[[Message], None]
# How long a fresh API waits for its first look at Prefect's workers before it decides a tier.
FIRST_POLL_SECONDS = 3.0


class Refused(Exception):
    """A click the server will not act on; its text goes back as server:error."""


@dataclass(frozen=True)
class Reserved:
    job: TakeJob
    project: Project  # as saved with the take reserved
    fallback: str | None  # why the take renders on a lower tier than asked, if it does


def reserve_click(store: ProjectStore, project_id: str, node_id: str,
                  views: dict[Quality, TierView]) -> Reserved:
    """Check the clicked node, pick its tier and reserve its take, in one locked edit of
    project.json; raises Refused (and nothing is saved) for a click that cannot render."""
    try:
        with store.edit(project_id) as project:
            node = project.get_node(node_id)
            if node is None:
                raise Refused(f"node {node_id!r} does not exist in project {project_id}")
            if node.node_type != TextToImage.name:
                raise Refused(f"node {node_id} is of type {node.node_type}; only "
                              f"{TextToImage.name} nodes generate")
            requested = project.quality
            used, why = choose_tier(requested, project.fallback,
                                    project.fallback_grace_seconds, views)
            try:
                job = prepare_in(project, store.project_dir(project_id), node_id,
                                 quality_requested=requested, quality_used=used)
            except (GraphError, ValueError) as exc:
                raise Refused(f"node {node_id} cannot be generated: {exc}") from None
    except ProjectNotFound:
        raise Refused(f"project {project_id!r} does not exist") from None
    except ManifestError as exc:
        raise Refused(f"project {project_id!r} cannot be read: {exc}") from None
    except GraphError as exc:  # the project as a whole, checked before it is saved
        raise Refused(f"node {node_id} cannot be generated: {exc}") from None
    return Reserved(job, project, why)


class Dispatcher:
    def __init__(self, store: ProjectStore, hub: Hub, relay: Relay) -> None:
        self.store = store
        self.hub = hub
        self.relay = relay
        self.tiers: Tiers = relay.tiers
        # Per tier, reservations are handed to Prefect one at a time, in the order they were
        # reserved, so the order of take numbers, of the queue shown and of Prefect's (FIFO)
        # queue is the same.
        self._reserving = asyncio.Lock()
        self._hand_out: dict[Quality, asyncio.Lock] = {q: asyncio.Lock() for q in Quality}

    async def start_generation(self, project_id: str, node_id: str, reply: Reply) -> str | None:
        """Handles one click; returns the task run id, or None when nothing was started."""
        try:
            return await self._start(project_id, node_id, reply)
        except Refused as exc:
            reply(server_message(Error(reason=str(exc), request_type="client:start_generation")))
            return None

    async def _start(self, project_id: str, node_id: str, reply: Reply) -> str | None:
        if not self.tiers.polled.is_set():  # a fresh API: one look at the workers first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tiers.polled.wait(), FIRST_POLL_SECONDS)
        async with self._reserving:
            reserved = await asyncio.to_thread(reserve_click, self.store, project_id, node_id,
                                               self.tiers.views())
            # From its reservation on, the reconciler leaves the take to this dispatcher: in a
            # burst a take waits its turn in the line below for many seconds, and a reconciler
            # that took it for abandoned would hand it out a second time.
            take_id = reserved.job.take_id
            self.relay.handing_out.add(take_id)
            hand_out = self._hand_out[reserved.job.quality_used]
            # Joins its tier's line now, while no later reservation can get ahead of it.
            turn = asyncio.ensure_future(hand_out.acquire())
        try:
            await turn
            return await self._hand_out_take(reserved, reply)
        finally:
            self.relay.handing_out.discard(take_id)
            if turn.done() and not turn.cancelled():
                hand_out.release()

    async def _hand_out_take(self, reserved: Reserved, reply: Reply) -> str | None:
        job = reserved.job
        if reserved.fallback is not None:
            reply(server_message(QualityFallback(
                node_id=job.node_id, requested=job.quality_requested, used=job.quality_used,
                reason=reserved.fallback)))
        self.relay.track(job.project_id, job.node_id, job.take_id)
        await self.tiers.enqueue(job.quality_used, job.project_id, job.node_id, job.take_id)
        place = self.relay.place(job.quality_used, job.take_id)

        # The client sees the take queued (and where) before it is handed out, so this
        # message can never arrive after the worker's own "generating".
        async def queued() -> list[Message]:
            return node_state_message(reserved.project, job.node_id, take_id=job.take_id,
                                      queue=place)

        await self.hub.publish(job.project_id, queued)
        try:
            task_run_id = await asyncio.to_thread(self._submit, job)
        except Exception as exc:
            # Prefect unreachable: the take stays queued in project.json and the
            # reconciler hands it out once Prefect answers again. Nothing is lost.
            log.warning("take %s reserved but not handed out yet: %s", job.take_id, exc)
            return None
        self.relay.emit(TakeQueued.of_job(job, task_run_id, why="dispatch"))
        return task_run_id

    def _submit(self, job: TakeJob) -> str:
        task_run_id = submit_take(job)  # ~0.15 s of HTTP: run in a thread
        record_submission(self.store, job.project_id, job.node_id, job.take_id, task_run_id)
        return task_run_id
