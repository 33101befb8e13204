"""The dispatcher (spec 3.1): a Generate click -> tier -> reserved take -> a warm task worker.

Quality comes from project.json and maps to a tier (studio.tiers). A click is never refused for
want of a worker: the take is reserved and handed to Prefect anyway, whose queue holds it for a
worker that connects later, and the node shows `queued` with its place in the tier's queue. A
lower tier is used only as the project's fallback policy allows (api.tiers.choose_tier). The
output path comes from the take reservation, never from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from prefect.events import emit_event

from api.hub import Hub, Message
from api.messages import Error, QualityFallback, server_message
from api.relay import QUEUED, Relay
from api.tiers import Tiers, choose_tier
from api.views import node_state_message
from studio.graph import GraphError
from studio.jobs import TakeJob, prepare_take
from studio.manifest import ManifestError
from studio.nodes import TextToImage
from studio.store import ProjectNotFound, ProjectStore
from studio.tiers import Quality
from tasks.events import take_resource
from tasks.submit import submit_take

log = logging.getLogger(__name__)

Reply = Callable[[Message], None]
# How long a fresh API waits for its first look at Prefect's workers before it decides a tier.
FIRST_POLL_SECONDS = 3.0


class Refused(Exception):
    """A click the server will not act on; its text goes back as server:error."""


def emit_queued(relay: Relay, job: TakeJob, task_run_id: str, why: str) -> None:
    """Tell the other API processes (through Prefect's event stream) that a take is queued;
    this process has told its own sockets already, so its relay skips the event."""
    event_id = uuid.uuid4()
    relay.mark_seen(event_id)
    emit_event(event=QUEUED, resource=take_resource(job, task_run_id), id=event_id,
               payload={"why": why})


def record_submission(store: ProjectStore, job: TakeJob, task_run_id: str) -> None:
    with store.edit(job.project_id) as project:
        node = project.get_node(job.node_id)
        take = node.get_take(job.take_id) if node else None
        if take is not None and take.task_run_id is None:  # the worker may have been first
            take.task_run_id = task_run_id


class Dispatcher:
    def __init__(self, store: ProjectStore, hub: Hub, relay: Relay) -> None:
        self.store = store
        self.hub = hub
        self.relay = relay
        self.tiers: Tiers = relay.tiers
        # Per tier, reservations are handed to Prefect one at a time, so the order of take
        # numbers, of the queue shown and of Prefect's (FIFO) queue is the same.
        self._hand_out: dict[Quality, asyncio.Lock] = {q: asyncio.Lock() for q in Quality}

    async def start_generation(self, project_id: str, node_id: str, reply: Reply) -> str | None:
        """Handles one click; returns the task run id, or None when nothing was started."""
        try:
            return await self._start(project_id, node_id, reply)
        except Refused as exc:
            reply(server_message(Error(reason=str(exc), request_type="client:start_generation")))
            return None

    async def _start(self, project_id: str, node_id: str, reply: Reply) -> str | None:
        try:
            project = await asyncio.to_thread(self.store.load, project_id)
        except ProjectNotFound:
            raise Refused(f"project {project_id!r} does not exist") from None
        except ManifestError as exc:
            raise Refused(f"project {project_id!r} cannot be read: {exc}") from None
        node = project.get_node(node_id)
        if node is None:
            raise Refused(f"node {node_id!r} does not exist in project {project_id}")
        if node.node_type != TextToImage.name:
            raise Refused(f"node {node_id} is of type {node.node_type}; only "
                          f"{TextToImage.name} nodes generate")

        requested = project.quality
        if not self.tiers.polled.is_set():  # a fresh API: one look at the workers first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tiers.polled.wait(), FIRST_POLL_SECONDS)
        used, why = choose_tier(requested, project.fallback, project.fallback_grace_seconds,
                                self.tiers.views())
        if used != requested:
            reply(server_message(QualityFallback(node_id=node_id, requested=requested,
                                                 used=used, reason=why or "")))

        async with self._hand_out[used]:
            try:
                job = await asyncio.to_thread(prepare_take, self.store, project_id, node_id,
                                              quality_requested=requested, quality_used=used)
            except (GraphError, ManifestError, ValueError) as exc:
                raise Refused(f"node {node_id} cannot be generated: {exc}") from None
            self.relay.track(project_id, node_id, job.take_id)
            self.relay.handing_out.add(job.take_id)
            await self.tiers.enqueue(used, project_id, node_id, job.take_id)
            place = self.relay.place(used, job.take_id)

            # The client sees the take queued (and where) before it is handed out, so this
            # message can never arrive after the worker's own "generating".
            async def queued() -> list[Message]:
                latest = await asyncio.to_thread(self.store.load, project_id)
                return node_state_message(latest, node_id, take_id=job.take_id, queue=place)

            await self.hub.publish(project_id, queued)
            try:
                task_run_id = await asyncio.to_thread(self._submit, job)
            except Exception as exc:
                # Prefect unreachable: the take stays queued in project.json and the
                # reconciler hands it out once Prefect answers again. Nothing is lost.
                log.warning("take %s reserved but not handed out yet: %s", job.take_id, exc)
                return None
            finally:
                self.relay.handing_out.discard(job.take_id)
        emit_queued(self.relay, job, task_run_id, "dispatch")
        return task_run_id

    def _submit(self, job: TakeJob) -> str:
        task_run_id = submit_take(job)  # ~0.15 s of HTTP: run in a thread
        record_submission(self.store, job, task_run_id)
        return task_run_id
