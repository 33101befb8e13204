"""The relay: Prefect's event stream (`studio.take.*`) -> the spec 5.1 messages, per project.

One subscription per API process, kept alive by its own retry loop (Prefect's subscriber gives
up ~10 s into a server restart). Every event is delivered once (by event id; results once per
take), in order, progress only rising. After a reconnect, takes that finished meanwhile are read
back from project.json and announced, and the reconciler runs (the server may have lost queued
tasks).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prefect.events import Event
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter

from api.hub import Hub, Message
from api.messages import QueuePlace, TaskCancelled, TaskProgress, TierStates, server_message
from api.tiers import Tiers
from api.views import failed_message, node_state_message, state_of, success_message
from studio.manifest import Project, Take, TakeStatus
from studio.nodes import NodeState
from studio.store import ProjectNotFound, ProjectStore
from studio.take_events import (
    TakeCancelled,
    TakeEvent,
    TakeFailed,
    TakeProgress,
    TakeQueued,
    TakeStarted,
    TakeSucceeded,
    parse,
)
from studio.tiers import Quality
from tasks import events

log = logging.getLogger(__name__)

TERMINAL = {TakeStatus.completed: "success", TakeStatus.failed: "failed",
            TakeStatus.cancelled: "cancelled"}
ENDED = ("success", "failed", "cancelled")
# Queue places are sent in batches this far apart: a burst of clicks moves every place at once.
PLACES_EVERY_SECONDS = 0.05


class _Bounded(OrderedDict[Any, Any]):
    """An insertion-ordered dict that forgets its oldest entries past `size`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.size:
            self.popitem(last=False)


class Relay:
    def __init__(self, store: ProjectStore, hub: Hub, tiers: Tiers | None = None) -> None:
        self.store = store
        self.hub = hub
        self.tiers = tiers or Tiers()
        self.tiers.on_queue_change.append(self._places_changed)
        self.tiers.on_state_change.append(self.publish_tier_states)
        self._sent_place: _Bounded = _Bounded(50_000)  # take id -> (position, reason)
        self._dirty: set[Quality] = set()
        self._places: asyncio.Task[None] | None = None
        self._cache: dict[str, tuple[tuple[int, int, int], Project]] = {}
        self.handing_out: set[str] = set()  # take ids a dispatcher is submitting right now
        self.started_at = datetime.now(UTC)
        self.connected = asyncio.Event()
        self.connections = 0
        self.disconnected_at: datetime | None = None
        self.on_reconnect: list[Callable[[datetime], Awaitable[None]]] = []
        self._seen: _Bounded = _Bounded(50_000)  # event ids
        self._announced: _Bounded = _Bounded(50_000)  # (take id, "success"|"failed")
        self._progress: _Bounded = _Bounded(10_000)  # take id -> last progress sent
        self.in_flight: dict[str, tuple[str, str]] = {}  # take id -> (project, node)
        self._resyncing: asyncio.Task[None] | None = None

    # --- bookkeeping shared with the dispatcher and the reconciler ------------------------

    def track(self, project_id: str, node_id: str, take_id: str) -> None:
        """Remember a take in flight, so its result is announced even if its event is missed."""
        if (take_id, "success") not in self._announced:
            self.in_flight[take_id] = (project_id, node_id)

    def mark_seen(self, event_id: uuid.UUID) -> None:
        """An event this process emits and has already delivered to its own sockets."""
        self._seen[event_id] = True

    def ended(self, take_id: str) -> bool:
        return any((take_id, k) in self._announced for k in ENDED)

    def _announce(self, take_id: str, kind: str) -> bool:
        """True the first time a take's result of this kind is announced."""
        self.in_flight.pop(take_id, None)
        self._sent_place.pop(take_id, None)
        if (take_id, kind) in self._announced:
            return False
        self._announced[(take_id, kind)] = True
        return True

    # --- the subscription -------------------------------------------------------------------

    async def run(self) -> None:
        # The tiers' watch lives as long as the relay: both follow the same Prefect server.
        watch = asyncio.create_task(self.tiers.run(), name="tiers")
        try:
            await self._follow()
        finally:
            watch.cancel()

    async def _follow(self) -> None:
        backoff = 0.25
        take_events = EventFilter(event=EventNameFilter(prefix=[events.PREFIX]))
        while True:
            try:
                # reconnection_attempts=0: every disconnect comes back here, so a reconnect
                # is always seen and followed by a re-sync.
                async with get_events_subscriber(filter=take_events,
                                                 reconnection_attempts=0) as subscriber:
                    self.connections += 1
                    self.connected.set()
                    backoff = 0.25
                    if self.connections > 1:
                        self._resyncing = asyncio.create_task(self._after_reconnect())
                    async for event in subscriber:
                        try:
                            await self.handle(event)
                        except Exception:
                            log.exception("relay: could not deliver event %s", event.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("relay: event stream unavailable (%s); retrying", exc)
            if self.connected.is_set():
                self.connected.clear()
                self.disconnected_at = datetime.now(UTC)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _after_reconnect(self) -> None:
        since = self.disconnected_at or self.started_at
        log.info("relay: reconnected to Prefect; re-syncing")
        for project_id in self.hub.projects():
            await self.resync(project_id, snapshot=True)
        for callback in self.on_reconnect:
            try:
                await callback(since)
            except Exception:
                log.exception("relay: after-reconnect step failed")

    # --- events -> messages -----------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        if event.id in self._seen:
            return
        self._seen[event.id] = True
        if event.occurred < self.started_at:  # the stream's backfill from before we started
            return
        typed = parse(event.event, dict(event.resource), event.payload)
        if typed is not None:
            await self.deliver(typed)

    async def deliver(self, event: TakeEvent) -> None:
        """One take event -> the messages its project's sockets see."""
        project_id, node_id, take_id = event.project_id, event.node_id, event.take_id
        task_id, tier = event.task_run_id, event.tier
        if tier is not None and not isinstance(event, TakeQueued):
            self.tiers.touch(tier)  # a worker of the tier spoke
        if isinstance(event, TakeQueued | TakeStarted | TakeProgress):
            if self.ended(take_id):
                return  # late news of a take that already ended
            self.track(project_id, node_id, take_id)

        match event:
            case TakeQueued():
                if tier is not None:
                    await self.tiers.enqueue(tier, project_id, node_id, take_id)
                await self.publish_state(project_id, node_id, take_id, task_id,
                                         place=self.place(tier, take_id))
            case TakeStarted(attempt=attempt):
                if tier is not None:
                    await self.tiers.started(tier, project_id, node_id, take_id)
                self._progress.pop(take_id, None)  # a retry's progress starts again from 0
                await self.publish_state(project_id, node_id, take_id, task_id,
                                         state=NodeState.generating, attempt=attempt or None)
            case TakeProgress(progress=progress, step=step, preview_path=preview):
                if progress < self._progress.get(take_id, -1):
                    return  # progress only rises
                self._progress[take_id] = progress
                message = server_message(TaskProgress(
                    task_id=task_id or "", node_id=node_id, take_id=take_id, progress=progress,
                    step=step, preview_path=preview))
                await self.hub.publish(project_id, _const([message]))
            case TakeSucceeded(output_path=output_path):
                await self.tiers.ended(take_id)
                if self._announce(take_id, "success"):
                    result = success_message(node_id, take_id=take_id, task_id=task_id,
                                             output_path=output_path,
                                             take_number=event.take_number)
                    await self._publish_with_state(project_id, node_id, [result], take_id,
                                                   task_id)
            case TakeFailed(error=error):
                await self.announce_failure(project_id, node_id, take_id, task_id, error)
            case TakeCancelled():
                await self.announce_cancelled(project_id, node_id, take_id, task_id)

    def emit(self, event: TakeEvent) -> None:
        """Tell the other API processes (through Prefect's event stream) of a take event this
        process decided and has told its own sockets already: its own relay skips it."""
        event_id = uuid.uuid4()
        self.mark_seen(event_id)
        try:
            events.emit(event, event_id)
        except Exception as exc:  # Prefect down: the other processes re-sync from project.json
            log.info("could not emit %s: %s", event.name, exc)

    async def announce_cancelled(self, project_id: str, node_id: str, take_id: str,
                                 task_id: str | None) -> None:
        await self.tiers.ended(take_id)
        if self._announce(take_id, "cancelled"):
            message = server_message(TaskCancelled(task_id=task_id, node_id=node_id,
                                                   take_id=take_id))
            await self._publish_with_state(project_id, node_id, [message], take_id, task_id)

    async def announce_failure(self, project_id: str, node_id: str, take_id: str,
                               task_id: str | None, error: str) -> None:
        """A failure this process decided (not from an event): sent once, like the others."""
        await self.tiers.ended(take_id)
        if self._announce(take_id, "failed"):
            message = failed_message(node_id, error, take_id=take_id, task_id=task_id)
            await self._publish_with_state(project_id, node_id, [message], take_id, task_id)

    def _read(self, project_id: str) -> Project:
        """project.json, parsed again only when the file changed (messages are built from it
        for every event; a burst would otherwise parse the same file hundreds of times)."""
        path = self.store.manifest_path(project_id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ProjectNotFound(project_id) from None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(project_id)
        if cached and cached[0] == key:
            return cached[1]
        project = self.store.load(project_id)
        self._cache[project_id] = (key, project)
        return project

    async def _load(self, project_id: str) -> Project | None:
        try:
            return await asyncio.to_thread(self._read, project_id)
        except (ProjectNotFound, ValueError):
            return None

    def _queued_take(self, project: Project | None, node_id: str, take_id: str) -> Take | None:
        """The take, if it is still queued in `project` and its result was not announced."""
        node = project.get_node(node_id) if project else None
        take = node.get_take(take_id) if node else None
        if take is None or take.status != TakeStatus.queued or self.ended(take_id):
            return None
        return take

    def place(self, tier: Quality | None, take_id: str) -> QueuePlace | None:
        """The take's place in its tier's queue, remembered as sent."""
        place = self.tiers.place(tier, take_id) if tier is not None else None
        if place is not None:
            self._sent_place[take_id] = (place.position, place.reason)
        return place

    async def publish_state(self, project_id: str, node_id: str, take_id: str | None,
                            task_id: str | None, state: NodeState | None = None,
                            place: QueuePlace | None = None, attempt: int | None = None) -> None:
        """node_state_updated: `state` as given, or derived from project.json when it is sent.
        A queue place is sent only while its take is still queued when the message is built
        (under the project's lock): a take that ended meanwhile gets no place after its result."""
        async def build() -> list[Message]:
            project = None if state and place is None else await self._load(project_id)
            if place is not None and take_id is not None and \
                    self._queued_take(project, node_id, take_id) is None:
                return []
            return node_state_message(project, node_id, take_id=take_id, task_id=task_id,
                                      state=state, queue=place, attempt=attempt)

        await self.hub.publish(project_id, build)

    async def publish_tier_states(self) -> None:
        message = server_message(TierStates(tiers=self.tiers.states()))
        for project_id in self.hub.projects():
            await self.hub.publish(project_id, _const([message]))

    # --- queue places -----------------------------------------------------------------------

    async def _places_changed(self, tiers: set[Quality]) -> None:
        self._dirty |= tiers
        if self._places is None or self._places.done():
            self._places = asyncio.create_task(self._send_places())

    async def _send_places(self) -> None:
        """Every queued take whose place changed gets one node_state_updated with it."""
        await asyncio.sleep(PLACES_EVERY_SECONDS)
        dirty, self._dirty = self._dirty, set()
        moved: dict[str, list[tuple[str, str, QueuePlace]]] = {}
        for tier in dirty:
            for waiting in self.tiers.queued(tier):
                place = self.tiers.place(tier, waiting.take_id)
                if place is None or self._sent_place.get(waiting.take_id) == (
                        place.position, place.reason):
                    continue
                moved.setdefault(waiting.project_id, []).append(
                    (waiting.node_id, waiting.take_id, place))
        for project_id, items in moved.items():
            if not self.hub.has_clients(project_id):
                continue

            async def build(project_id: str = project_id,
                            items: list[tuple[str, str, QueuePlace]] = items) -> list[Message]:
                project = await self._load(project_id)
                messages: list[Message] = []
                for node_id, take_id, place in items:
                    # Built under the project's lock from project.json: a take that started
                    # meanwhile gets no stale "queued" after its "generating".
                    take = self._queued_take(project, node_id, take_id)
                    if take is None:
                        continue
                    self._sent_place[take_id] = (place.position, place.reason)
                    messages += node_state_message(project, node_id, take_id=take_id,
                                                   task_id=take.task_run_id, queue=place)
                return messages

            await self.hub.publish(project_id, build)

    async def _publish_with_state(self, project_id: str, node_id: str, first: list[Message],
                                  take_id: str | None, task_id: str | None) -> None:
        async def build() -> list[Message]:
            project = await self._load(project_id)
            # While other takes of the node are in flight the node's state is theirs: it names
            # no take, never the one that just ended (a completed take is never "queued").
            busy = state_of(project, node_id) in (NodeState.queued, NodeState.generating)
            return first + node_state_message(project, node_id,
                                              take_id=None if busy else take_id,
                                              task_id=None if busy else task_id)

        await self.hub.publish(project_id, build)

    async def resync(self, project_id: str, *, snapshot: bool = False,
                     min_age: float = 0.0) -> None:
        """Announce, from project.json, the results of tracked takes that ended without their
        event reaching us (lost across a restart); `min_age` leaves the event a head start."""
        if not self.hub.has_clients(project_id):
            return

        async def build() -> list[Message]:
            project = await self._load(project_id)
            if project is None:
                return []
            messages: list[Message] = []
            nodes: dict[str, None] = {}
            now = time.time()
            for take_id, (pid, node_id) in list(self.in_flight.items()):
                if pid != project_id:
                    continue
                node = project.get_node(node_id)
                take = node.get_take(take_id) if node else None
                if take is None:
                    self.in_flight.pop(take_id, None)
                    continue
                kind = TERMINAL.get(take.status)
                if kind is None:  # still in flight: its state has not changed, send nothing
                    continue
                if take.finished_at and now - take.finished_at.timestamp() < min_age:
                    continue
                if not self._announce(take_id, kind):
                    continue
                if kind == "success":
                    messages.append(success_message(
                        node_id, take_id=take.id, task_id=take.task_run_id,
                        output_path=take.path, take_number=take.number))
                elif kind == "cancelled":
                    messages.append(server_message(TaskCancelled(
                        task_id=take.task_run_id, node_id=node_id, take_id=take.id)))
                else:
                    messages.append(failed_message(node_id, take.error or "the take failed",
                                                   take_id=take.id, task_id=take.task_run_id))
                nodes[node_id] = None
            if snapshot:
                for node in project.nodes:
                    if any(t.status in (TakeStatus.queued, TakeStatus.generating)
                           for t in node.takes):
                        nodes[node.id] = None
            for node_id in nodes:
                messages += node_state_message(project, node_id)
            return messages

        await self.hub.publish(project_id, build)


def _const(messages: list[Message]) -> Callable[[], Awaitable[list[Message]]]:
    async def build() -> list[Message]:
        return messages

    return build
