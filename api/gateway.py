"""One API process's parts, wired once: settings, store, sockets (hub), relay, dispatcher and
reconciler; the app's lifespan starts and stops them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from api.dispatcher import Dispatcher
from api.hub import Hub
from api.reconcile import Reconciler
from api.relay import Relay
from api.settings import Settings
from studio.manifest import Project
from studio.store import ProjectStore


class Gateway:
    """Everything one API process holds: settings, store, sockets, relay, dispatcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ProjectStore(settings.workspace)
        self.hub = Hub()
        self.relay = Relay(self.store, self.hub)
        self.dispatcher = Dispatcher(self.store, self.hub, self.relay)
        self.reconciler = Reconciler(self.store, self.relay, interval=settings.reconcile_seconds,
                                     lost_after=settings.lost_after_seconds)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def load(self, project_id: str) -> Project:
        return await asyncio.to_thread(self.store.load, project_id)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task the gateway keeps a reference to (and cancels at shutdown)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        self.settings.workspace.ensure()
        self.spawn(self.relay.run())
        self.spawn(self.reconciler.run())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.hub.close_all()
