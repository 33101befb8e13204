"""The sockets of each project, and ordered delivery to them.

Every socket has its own queue and sender task, so a slow browser never stalls the relay or
another socket. Everything sent to a project's sockets goes through `publish` under that
project's lock: messages are built and queued in one order for every socket, and a socket that
connects gets its snapshot before any live message (nothing lost between the two).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket

log = logging.getLogger(__name__)

Message = dict[str, Any]
Build = Callable[[], Awaitable[list[Message]]]

# A socket this far behind is not reading; it is closed rather than grow memory without end.
MAX_BACKLOG = 5000


def encode(message: Message) -> str:
    """A message as its JSON text (as Starlette's send_json writes it)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Client:
    def __init__(self, websocket: WebSocket, project_id: str) -> None:
        self.websocket = websocket
        self.project_id = project_id
        self._queue: asyncio.Queue[Message | str | None] = asyncio.Queue()
        self._sender = asyncio.create_task(self._pump(), name=f"ws-send-{project_id}")

    async def _pump(self) -> None:
        while (message := await self._queue.get()) is not None:
            try:
                await self.websocket.send_text(
                    message if isinstance(message, str) else encode(message))
            except Exception:  # the socket went away; the receive loop notices and detaches
                return

    def send(self, message: Message | str) -> None:
        """Queue a message (or its JSON text, encoded once for every socket of a project)."""
        if self._queue.qsize() >= MAX_BACKLOG:
            log.warning("closing a socket of %s: %d messages behind", self.project_id,
                        MAX_BACKLOG)
            self._queue.put_nowait(None)
            asyncio.create_task(self.websocket.close(code=1013, reason="too far behind"))
            return
        self._queue.put_nowait(message)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._sender, timeout=5)


class Hub:
    def __init__(self) -> None:
        self._clients: dict[str, set[Client]] = defaultdict(set)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def projects(self) -> list[str]:
        return [p for p, clients in self._clients.items() if clients]

    def has_clients(self, project_id: str) -> bool:
        return bool(self._clients.get(project_id))

    async def attach(self, client: Client, snapshot: Build) -> None:
        """Queue the snapshot, then start delivering live messages to the client."""
        async with self._locks[client.project_id]:
            for message in await snapshot():
                client.send(message)
            self._clients[client.project_id].add(client)

    async def detach(self, client: Client) -> None:
        self._clients[client.project_id].discard(client)
        await client.close()

    async def publish(self, project_id: str, build: Build) -> None:
        """Build the messages (e.g. reading project.json) and queue them for every socket.

        Built under the project's lock, so a state derived from project.json is never sent
        after a newer one.
        """
        if not self.has_clients(project_id):
            return
        async with self._locks[project_id]:
            messages = await build()
            # Encoded once, not once per socket: a burst sends each message to every socket.
            texts = [encode(message) for message in messages]
            for client in list(self._clients[project_id]):
                for text in texts:
                    client.send(text)

    async def close_all(self) -> None:
        for clients in list(self._clients.values()):
            for client in list(clients):
                await client.close()
        self._clients.clear()
