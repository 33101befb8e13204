"""The dispatcher (spec 3.1): a Generate click -> tier -> reserved take -> a warm task worker.

Quality comes from project.json and maps to a tier (studio.tiers); if no task worker of that
tier is connected, the next lower tier that has one is used (and the client told), and with
none the click fails at once rather than queueing work nobody will run. The output path comes
from the take reservation, never from the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from prefect.events import emit_event

from api.hub import Hub, Message
from api.messages import Error, QualityFallback, server_message
from api.relay import QUEUED, Relay
from api.views import failed_message, node_state_message
from studio.graph import GraphError
from studio.jobs import TakeJob, prepare_take
from studio.manifest import ManifestError
from studio.nodes import TextToImage
from studio.store import ProjectNotFound, ProjectStore
from studio.takes import fail_take
from studio.tiers import Quality, fallback_order
from tasks.availability import online_tiers
from tasks.events import take_resource
from tasks.submit import submit_take

log = logging.getLogger(__name__)

Reply = Callable[[Message], None]
ONLINE_GRACE_SECONDS = 3.0


class Refused(Exception):
    """A click the server will not act on; its text goes back as server:error."""


def no_worker_text(order: list[Quality]) -> str:
    names = ", ".join(q.value for q in order)
    return (f"no task worker is online for quality {names}; start one with "
            f"`studio worker --tier {order[-1].value}` (or `make up`)")


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
        self._seen_online: dict[Quality, float] = {}

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
        order = fallback_order(requested)
        try:
            online = await self.online()
        except Exception as exc:  # Prefect down: say so rather than queue into the void
            reply(failed_message(node_id, f"the Prefect server cannot be reached: {exc}",
                                 take_id=None, task_id=None))
            return None
        used = next((q for q in order if q in online), None)
        if used is None:
            reply(failed_message(node_id, no_worker_text(order), take_id=None, task_id=None))
            return None
        if used != requested:
            reply(server_message(QualityFallback(
                node_id=node_id, requested=requested, used=used,
                reason=f"no task worker is online for quality {requested.value}")))

        try:
            job = await asyncio.to_thread(prepare_take, self.store, project_id, node_id,
                                          quality_requested=requested, quality_used=used)
        except (GraphError, ManifestError, ValueError) as exc:
            raise Refused(f"node {node_id} cannot be generated: {exc}") from None
        self.relay.track(project_id, node_id, job.take_id)

        # The client sees the take queued before it is handed out, so this message can never
        # arrive after the worker's own "generating".
        async def queued() -> list[Message]:
            latest = await asyncio.to_thread(self.store.load, project_id)
            return node_state_message(latest, node_id, take_id=job.take_id)

        await self.hub.publish(project_id, queued)

        try:
            task_run_id = await asyncio.to_thread(self._submit, job)
        except Exception as exc:
            log.exception("could not submit take %s", job.take_id)
            error = f"the take could not be handed to a worker: {exc}"
            await asyncio.to_thread(fail_take, self.store, project_id, node_id, job.take_id,
                                    error)
            await self.relay.announce_failure(project_id, node_id, job.take_id, None, error)
            return None
        emit_queued(self.relay, job, task_run_id, "dispatch")
        return task_run_id

    async def online(self) -> set[Quality]:
        """Tiers with a task worker now or within ONLINE_GRACE_SECONDS: Prefect's registry
        drops a worker for a moment each time it hands it a run, and the server's queue keeps
        a take for a worker that is back a second later."""
        now = time.monotonic()
        for quality in await online_tiers():
            self._seen_online[quality] = now
        return {q for q, seen in self._seen_online.items() if now - seen < ONLINE_GRACE_SECONDS}

    def _submit(self, job: TakeJob) -> str:
        task_run_id = submit_take(job)  # ~0.15 s of HTTP: run in a thread
        record_submission(self.store, job, task_run_id)
        return task_run_id
