"""What the gateway knows of each quality tier: its task workers (online since when, offline
since when), its queue of takes in order, the takes it is rendering, and the fallback rule.

Prefect's task-worker registry says which workers are connected; the queue is the workspace's
`queued` takes in the order they were handed to Prefect (the server's queue is FIFO per task),
kept in memory and rebuilt from the manifests on every reconcile pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client

from api.messages import QueuePlace, TierState
from studio.manifest import Project, TakeStatus
from studio.tiers import TIERS, FallbackPolicy, Quality, fallback_order

log = logging.getLogger(__name__)

# Prefect's registry drops a worker for a moment each time it hands it a run; a tier counts as
# offline only after this long without one.
ONLINE_GRACE_SECONDS = 3.0
# Prefect's note of a worker moves about every second while the server has no run for it.
SERVER_WAITING_SECONDS = 3.0
ALL = list(TIERS)


def expected_tiers(environ: dict[str, str] | None = None) -> set[Quality]:
    """The tiers whose workers the stack started (STUDIO_TIERS=low,standard); empty: unknown."""
    raw = (os.environ if environ is None else environ).get("STUDIO_TIERS", "")
    return {Quality(t.strip()) for t in raw.split(",") if t.strip()}


def missing_weights(quality: Quality, environ: dict[str, str] | None = None) -> str | None:
    """The problem of a tier whose weights are not on this machine, with the command that
    fixes it; None when they are there or this process cannot tell (no STUDIO_MODELS_ROOT)."""
    env = os.environ if environ is None else environ
    root = env.get("STUDIO_MODELS_ROOT")
    if not root:
        return None
    folder = Path(root) / "flux" / TIERS[quality].variant
    if (folder / "model_index.json").is_file():
        return None
    return (f"no weights for {quality.value} ({TIERS[quality].variant}) at {folder}: run "
            "`make download-models` (or `make demo` for the tiny model)")


@dataclass
class Waiting:
    project_id: str
    node_id: str
    take_id: str
    added: float = field(default_factory=time.monotonic)


@dataclass
class TierView:
    """One tier as the fallback rule sees it."""

    online: bool
    offline_for: float  # seconds; 0 when online
    busy: bool  # its workers are all rendering, or takes wait in its queue


def choose_tier(requested: Quality, policy: FallbackPolicy, grace: float,
                views: dict[Quality, TierView]) -> tuple[Quality, str | None]:
    """The tier a click renders on, and why it is not the requested one (None when it is).

    A click is never refused for want of a worker: without a fallback it waits in the
    requested tier's queue. `when_offline` falls back only once the requested tier has been
    offline for `grace` seconds (a worker restarting for 10 s downgrades nothing);
    `when_busy` also when its worker is busy and a lower tier's is online and idle.
    """
    wanted = views[requested]
    if policy == FallbackPolicy.never:
        return requested, None
    lower = [q for q in fallback_order(requested)[1:] if views[q].online]
    if not wanted.online:
        if lower and wanted.offline_for >= grace:
            return lower[0], (f"no task worker has been online for quality {requested.value} "
                              f"for {wanted.offline_for:.0f} s")
        return requested, None
    if policy == FallbackPolicy.when_busy and wanted.busy:
        idle = [q for q in lower if not views[q].busy]
        if idle:
            return idle[0], f"the {requested.value} task worker is busy"
    return requested, None


@dataclass
class _Tier:
    workers: int = 0
    online_since: float | None = None
    last_seen: float | None = None
    offline_since: float = field(default_factory=time.monotonic)
    ever_online: bool = False
    last_busy: float = field(default_factory=time.monotonic)
    queue: OrderedDict[str, Waiting] = field(default_factory=OrderedDict)
    generating: dict[str, Waiting] = field(default_factory=dict)


class Tiers:
    def __init__(self, expected: set[Quality] | None = None,
                 poll_seconds: float = 1.0) -> None:
        self.expected = expected_tiers() if expected is None else expected
        self.poll_seconds = poll_seconds
        self._tiers = {q: _Tier() for q in ALL}
        self._client: PrefectClient | None = None
        self._stamps: dict[str, tuple[float, float]] = {}  # worker -> (its note, when it moved)
        self.polled = asyncio.Event()  # set after the first successful look at Prefect
        self.prefect_error: str | None = None
        # Called with the tiers whose queue changed, and when any tier's state changed.
        self.on_queue_change: list[Callable[[set[Quality]], Awaitable[None]]] = []
        self.on_state_change: list[Callable[[], Awaitable[None]]] = []

    # --- workers ----------------------------------------------------------------------------

    async def poll(self) -> bool:
        """Asks Prefect which task workers are connected; True when a tier's state or worker
        count changed."""
        from tasks.text_to_image import TIER_TASKS

        by_key = {t.task_key: q for q, t in TIER_TASKS.items()}
        counts = dict.fromkeys(ALL, 0)
        now = time.monotonic()
        stamps: dict[str, tuple[float, float]] = {}
        for worker in await self._connected_workers(list(by_key)):
            tiers = {by_key[k] for k in worker.get("task_keys", []) if k in by_key}
            for q in tiers:
                counts[q] += 1
            # Prefect's server notes a worker each time it starts waiting for a run for it
            # (about every second while its queue is empty); while it is handing the worker a
            # run (the worker busy with the one before) the note does not move. A note that
            # has not moved for a while: the server has runs for that worker, so none of its
            # tier's SCHEDULED runs is lost. Compared with our last look, not with our clock.
            ident = str(worker.get("identifier"))
            try:
                stamp = datetime.fromisoformat(str(worker.get("timestamp"))).timestamp()
            except ValueError:
                stamp = 0.0
            seen = self._stamps.get(ident)
            # (The server derives the note from a monotonic clock: it jitters by microseconds.)
            if seen is None or stamp - seen[0] >= 0.5:
                seen = (stamp, now)
            moved_at = seen[1]
            stamps[ident] = seen
            if now - moved_at >= SERVER_WAITING_SECONDS:
                for q in tiers:
                    self._tiers[q].last_busy = now
        self._stamps = stamps
        before = self._workers_view()
        for q, tier in self._tiers.items():
            tier.workers = counts[q]
            if counts[q]:
                tier.last_seen = now
                tier.ever_online = True
                if tier.online_since is None:
                    tier.online_since = now
            elif tier.online_since is not None and (
                    tier.last_seen is None or now - tier.last_seen >= ONLINE_GRACE_SECONDS):
                tier.online_since = None
                tier.offline_since = tier.last_seen or now
        self.polled.set()
        return self._workers_view() != before

    async def _connected_workers(self, keys: list[str]) -> list[dict[str, Any]]:
        """Prefect's task-worker registry, through one client kept open between polls: a new
        client per poll builds a TLS context each time, which held the event loop (and every
        socket's messages) for tens of milliseconds a second under load."""
        if self._client is None:
            client = get_client()
            await client.__aenter__()
            self._client = client
        try:
            response = await self._client._client.post(  # no client method wraps this route
                "/task_workers/filter", json={"task_worker_filter": {"task_keys": keys}})
            response.raise_for_status()
        except BaseException:
            await self.close()  # a restarted server gets a fresh connection next time
            raise
        return list(response.json())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    def _workers_view(self) -> list[tuple[str, int]]:
        """What a tier-state message is sent for: workers coming and going (queue depths change
        with every click and are read from /healthz)."""
        return [(self.state(q), t.workers) for q, t in self._tiers.items()]

    async def run(self) -> None:
        try:
            await self._watch()
        finally:
            await self.close()

    async def _watch(self) -> None:
        while True:
            try:
                changed = await self.poll()
                self.prefect_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.prefect_error = str(exc)
                changed = False
                log.info("tiers: Prefect unavailable (%s)", exc)
            if changed:
                for callback in self.on_state_change:
                    try:
                        await callback()
                    except Exception:
                        log.exception("tiers: state-change step failed")
            await asyncio.sleep(self.poll_seconds)

    def online(self, quality: Quality) -> bool:
        return self._tiers[quality].online_since is not None

    def touch(self, quality: Quality) -> None:
        """Its worker did something (an event of one of its takes)."""
        self._tiers[quality].last_busy = time.monotonic()

    def idle_for(self, quality: Quality) -> float:
        """Seconds since the tier last rendered anything (0 while it renders)."""
        tier = self._tiers[quality]
        if tier.generating:
            tier.last_busy = time.monotonic()
            return 0.0
        return time.monotonic() - tier.last_busy

    def online_for(self, quality: Quality) -> float:
        since = self._tiers[quality].online_since
        return 0.0 if since is None else time.monotonic() - since

    def state(self, quality: Quality) -> str:
        tier = self._tiers[quality]
        if tier.online_since is not None:
            return "online"
        if quality in self.expected and not tier.ever_online:
            return "starting"
        return "offline"

    def views(self) -> dict[Quality, TierView]:
        now = time.monotonic()
        return {q: TierView(online=t.online_since is not None,
                            offline_for=0.0 if t.online_since is not None
                            else now - t.offline_since,
                            busy=bool(t.queue) or len(t.generating) >= max(t.workers, 1))
                for q, t in self._tiers.items()}

    def states(self) -> list[TierState]:
        return [TierState(tier=q, state=self.state(q), workers=t.workers,  # type: ignore[arg-type]
                          queued=len(t.queue), generating=len(t.generating),
                          problem=missing_weights(q))
                for q, t in self._tiers.items()]

    def ready(self) -> bool:
        """Every tier the stack started has a worker (any tier, when none is named)."""
        wanted = self.expected or set(ALL)
        online = {q for q in ALL if self.online(q)}
        return wanted <= online if self.expected else bool(online)

    # --- queues -----------------------------------------------------------------------------

    def place(self, quality: Quality, take_id: str) -> QueuePlace | None:
        tier = self._tiers[quality]
        if take_id not in tier.queue:
            return None
        position = list(tier.queue).index(take_id) + 1
        return QueuePlace(tier=quality, position=position, reason=self.reason(quality, position))

    def reason(self, quality: Quality, position: int) -> str:
        tier = self._tiers[quality]
        name = f"a {quality.value} GPU worker"
        if tier.online_since is None:
            if quality in self.expected and not tier.ever_online:
                return f"waiting for {name} (it is starting)"
            problem = missing_weights(quality)
            return f"waiting for {name} ({problem or 'none is online'})"
        ahead = position - 1
        if ahead == 0:
            return f"next for the {quality.value} worker"
        return f"waiting for the {quality.value} worker: {ahead} queued ahead"

    def tier_of(self, take_id: str) -> Quality | None:
        for q, tier in self._tiers.items():
            if take_id in tier.queue or take_id in tier.generating:
                return q
        return None

    def queued(self, quality: Quality) -> list[Waiting]:
        return list(self._tiers[quality].queue.values())

    async def _changed(self, tiers: set[Quality]) -> None:
        for callback in self.on_queue_change:
            try:
                await callback(tiers)
            except Exception:
                log.exception("tiers: queue-change step failed")

    async def enqueue(self, quality: Quality, project_id: str, node_id: str,
                      take_id: str) -> None:
        tier = self._tiers[quality]
        if take_id in tier.queue or take_id in tier.generating:
            return
        tier.queue[take_id] = Waiting(project_id, node_id, take_id)
        await self._changed({quality})

    async def started(self, quality: Quality, project_id: str, node_id: str,
                      take_id: str) -> None:
        tier = self._tiers[quality]
        waiting = tier.queue.pop(take_id, None)
        tier.generating[take_id] = waiting or Waiting(project_id, node_id, take_id)
        if waiting is not None:
            await self._changed({quality})

    async def ended(self, take_id: str) -> None:
        changed = set()
        for q, tier in self._tiers.items():
            if tier.queue.pop(take_id, None) is not None:
                changed.add(q)
            tier.generating.pop(take_id, None)
        if changed:
            await self._changed(changed)

    async def rebuild(self, projects: list[Project], read_at: float) -> None:
        """The queues as the manifests read at `read_at` (monotonic) say: other API processes
        queue takes too. The order already known is kept, new ones go after it in the order
        they were reserved; what this process added since the read stays."""
        queued: dict[Quality, dict[str, tuple[float, Waiting]]] = {q: {} for q in ALL}
        generating: dict[Quality, dict[str, Waiting]] = {q: {} for q in ALL}
        for project in projects:
            for node in project.nodes:
                for take in node.takes:
                    waiting = Waiting(project.id, node.id, take.id)
                    if take.status == TakeStatus.queued:
                        queued[take.quality_used][take.id] = (take.created_at.timestamp(),
                                                              waiting)
                    elif take.status == TakeStatus.generating:
                        generating[take.quality_used][take.id] = waiting
        changed = set()
        for q, tier in self._tiers.items():
            new = queued[q]
            kept = [(k, w) for k, w in tier.queue.items() if k in new or w.added > read_at]
            added = sorted((v for k, v in new.items() if k not in tier.queue),
                           key=lambda pair: pair[0])
            order = OrderedDict(kept + [(w.take_id, w) for _, w in added])
            if list(order) != list(tier.queue):
                changed.add(q)
            tier.queue = order
            tier.generating = {**generating[q], **{k: w for k, w in tier.generating.items()
                                                   if w.added > read_at}}
        if changed:
            await self._changed(changed)
