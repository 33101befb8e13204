"""The hub: every socket of a project gets the same messages in the same order, its snapshot
before any live message, and a socket that stops reading is closed instead of growing memory."""

from __future__ import annotations

import asyncio
from typing import Any

from api import hub as hub_module
from api.hub import Client, Hub
from tests.factories import RecordingSocket


def const(*messages: dict[str, Any]):
    async def build() -> list[dict[str, Any]]:
        return list(messages)

    return build


def test_a_socket_gets_its_snapshot_before_any_live_message_and_every_socket_the_same_order(
) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        hub = Hub()
        first, second = RecordingSocket(), RecordingSocket()
        a, b = Client(first, "P"), Client(second, "P")  # type: ignore[arg-type]
        await hub.attach(a, const({"n": "snapshot-a"}))
        await hub.publish("P", const({"n": 1}))
        await hub.attach(b, const({"n": "snapshot-b"}))
        await hub.publish("P", const({"n": 2}, {"n": 3}))
        await hub.close_all()
        return first.sent, second.sent

    first, second = asyncio.run(main())

    assert first == [{"n": "snapshot-a"}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert second == [{"n": "snapshot-b"}, {"n": 2}, {"n": 3}]


def test_a_project_without_sockets_builds_nothing_and_others_hear_nothing() -> None:
    built: list[str] = []

    async def build() -> list[dict[str, Any]]:
        built.append("read project.json")
        return [{"n": 1}]

    async def main() -> list[Any]:
        hub = Hub()
        other = RecordingSocket()
        await hub.attach(Client(other, "Other"), const())  # type: ignore[arg-type]
        await hub.publish("P", build)
        await hub.close_all()
        return other.sent

    assert asyncio.run(main()) == []
    assert built == []


def test_a_detached_socket_gets_nothing_more() -> None:
    async def main() -> list[Any]:
        hub = Hub()
        socket = RecordingSocket()
        client = Client(socket, "P")  # type: ignore[arg-type]
        await hub.attach(client, const())
        await hub.publish("P", const({"n": 1}))
        await hub.detach(client)
        await hub.publish("P", const({"n": 2}))
        return socket.sent

    assert asyncio.run(main()) == [{"n": 1}]


class StuckSocket(RecordingSocket):
    """A browser that stopped reading: its first send never completes."""

    async def send_json(self, message: dict[str, Any]) -> None:
        await asyncio.Event().wait()


def test_a_socket_too_far_behind_is_closed_rather_than_queue_without_end(monkeypatch) -> None:
    monkeypatch.setattr(hub_module, "MAX_BACKLOG", 10)

    async def main() -> int | None:
        hub = Hub()
        socket = StuckSocket()
        client = Client(socket, "P")  # type: ignore[arg-type]
        await hub.attach(client, const())
        for n in range(20):
            await hub.publish("P", const({"n": n}))
        await asyncio.sleep(0)  # the close it scheduled runs
        client._sender.cancel()
        return socket.closed

    assert asyncio.run(main()) == 1013
