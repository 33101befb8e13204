"""Helpers of the API gateway's tests: a real uvicorn in a thread, a real WebSocket client,
and a project with a Text-to-Image node made through the REST API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.sync.client import ClientConnection, connect

from api.app import create_app
from api.settings import Settings
from scripts.local_prefect import free_port
from studio.workspace import Workspace

Message = dict[str, Any]


class ApiServer:
    """The gateway under a real uvicorn on a free port, in a thread of the test process."""

    def __init__(self, workspace: Path, **settings: Any) -> None:
        self.settings = Settings(workspace=Workspace(workspace), **settings)
        self.app = create_app(self.settings)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="api")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    def start(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API did not start")
            time.sleep(0.05)
        # The relay must be subscribed before a test clicks, or the first events are missed.
        while not self.gateway.relay.connected.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError("the API's relay did not connect to Prefect")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def socket(self, project_id: str, query: str = "") -> Socket:
        return Socket(f"ws://127.0.0.1:{self.port}/ws/{project_id}{query}")


class Socket:
    """A websockets client that keeps every message it received, in order."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=10, max_size=None)
        self.received: list[Message] = []

    def send(self, message: Message | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def click(self, node_id: str) -> None:
        self.send({"type": "client:start_generation", "payload": {"node_id": node_id}})

    def next(self, timeout: float = 30) -> Message:
        message = json.loads(self.ws.recv(timeout=timeout))
        self.received.append(message)
        return message

    def until(self, done: Callable[[Message], bool], timeout: float = 60,
              what: str = "a message") -> list[Message]:
        """Messages up to and including the first for which `done` is true."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout:.0f} s; got {got}")
            try:
                message = self.next(timeout=left)
            except TimeoutError:
                continue
            got.append(message)
            if done(message):
                return got

    def quiet_for(self, seconds: float) -> list[Message]:
        """Everything that arrives within `seconds`."""
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.next(timeout=left))
            except TimeoutError:
                break
        return got

    def close(self) -> None:
        self.ws.close()


def assert_no_worker_online(grace: float = 10.0) -> None:
    """A task worker left connected by another test module (of another workspace) would take
    this module's takes: Prefect hands a task run to any worker serving its task. A worker that
    was just stopped is forgotten by the server within a second or two: hence the grace."""
    import asyncio

    from tasks.availability import online_tiers

    deadline = time.monotonic() + grace
    while online := asyncio.run(online_tiers()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"task workers of {sorted(online)} from another test are still connected to the "
                "session's Prefect server (a session-scoped stack, e.g. tests/e2e/stack.py?); "
                "they would render this module's takes in their own workspace")
        time.sleep(0.5)


def of_type(kind: str, messages: list[Message]) -> list[Message]:
    return [m["payload"] for m in messages if m["type"] == f"server:{kind}"]


def is_(kind: str, **fields: Any) -> Callable[[Message], bool]:
    """A predicate: a server message of this kind whose payload has these fields."""
    def check(message: Message) -> bool:
        return message["type"] == f"server:{kind}" and all(
            message["payload"].get(k) == v for k, v in fields.items())

    return check


def new_project(http: httpx.Client, name: str, quality: str = "standard") -> str:
    response = http.post("/api/projects", json={"name": name, "quality": quality})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def add_t2i(http: httpx.Client, project_id: str, *, steps: int = 2, prompt: str = "a red fox",
            shot: str | None = None, size: int = 256) -> str:
    """A Text-to-Image node rendering fast on the tiny model: 256x256, `steps` steps (a larger
    `size` for a take that must still be rendering when the test acts on it)."""
    body: dict[str, Any] = {
        "node_type": "text_to_image",
        "params": {"prompt": prompt, "steps": steps, "seed": 7, "preset": "custom",
                   "width": size, "height": size},
    }
    if shot:
        body["shot"] = {"scene": "SCENE_01", "shot": shot, "version": "v01"}
    response = http.post(f"/api/projects/{project_id}/nodes", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])
