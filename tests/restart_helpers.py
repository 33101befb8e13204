"""What the restart and re-sync tests read back: a node's takes, a task run's state, every
Prefect task run of a take, a socket's buffered messages, and whether an ended take was ever
announced again."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.client.schemas.objects import StateType

from tests.api_helpers import Message, Socket


def takes(http: httpx.Client, project_id: str, node_id: str) -> list[dict[str, Any]]:
    return http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()


def run_state(task_run_id: str) -> StateType | None:
    """The state type Prefect shows for this task run now."""
    async def read() -> StateType | None:
        async with get_client() as client:
            state = (await client.read_task_run(uuid.UUID(task_run_id))).state
        return state.type if state else None

    return asyncio.run(read())


def runs_of(task_run_id: str) -> list[tuple[StateType, int]]:
    """(state, run count) of every Prefect task run of the take this run belongs to (a take's
    runs share its label as their name): a take handed out anew would show a second run."""
    async def read() -> list[tuple[StateType, int]]:
        async with get_client() as client:
            name = (await client.read_task_run(uuid.UUID(task_run_id))).name
            runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))
            return [(r.state.type, r.run_count) for r in runs if r.state is not None]

    return asyncio.run(read())


def assert_rendered_once_in_prefect(task_run_id: str, what: str, timeout: float = 90) -> None:
    """Exactly one of the take's task runs is COMPLETED, run once. Polled: a worker's state
    change that Prefect missed while restarting is resent when the worker reconnects (its events
    client checks its unconfirmed events every 30 s), and recorded a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        runs = runs_of(task_run_id)
        if [count for state, count in runs if state == StateType.COMPLETED] == [1]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: Prefect shows its runs as {runs} (state, run count) "
                                 f"after {timeout:.0f} s, not one COMPLETED run, run once")
        time.sleep(1)


class Reader:
    """Reads a socket in a thread while the test waits on other things: a socket left unread
    for minutes stops answering the server's pings and is closed."""

    def __init__(self, socket: Socket) -> None:
        self.socket = socket
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="socket-reader")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.socket.next(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:  # closed
                return

    def stop(self, quiet: float = 2.0) -> list[Message]:
        """Once nothing has arrived for `quiet` seconds: everything the socket received."""
        seen = -1
        while seen != len(self.socket.received):
            seen = len(self.socket.received)
            self._stop.wait(quiet)
        self._stop.set()
        self._thread.join(timeout=5)
        return self.socket.received


def drain(socket: Socket, quiet: float = 2.0) -> list[Message]:
    """Reads what the socket has buffered, until nothing arrives for `quiet` seconds."""
    got: list[Message] = []
    while more := socket.quiet_for(quiet):
        got += more
    return got


def take_of(message: Message) -> str | None:
    payload = message["payload"]
    return payload.get("take_id") or (payload.get("result") or {}).get("take_id")


def assert_no_take_announced_after_it_ended(messages: list[Message]) -> None:
    """No `queued`/`generating` state and no progress for a take after its result."""
    ended: set[str] = set()
    for message in messages:
        kind, payload, take = message["type"], message["payload"], take_of(message)
        if kind in ("server:task_success", "server:task_failed", "server:task_cancelled"):
            ended.add(take or "")
        elif take in ended:
            assert kind != "server:task_progress", f"progress for take {take} after its result"
            if kind == "server:node_state_updated":
                assert payload["state"] not in ("queued", "generating") and not payload["queue"], (
                    f"take {take} announced {payload['state']} after it ended: {payload}")
