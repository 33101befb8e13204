"""The relay, unit by unit: Prefect's take events -> the messages a project's sockets get.

Real relay, hub, tiers and project store; the events are real Prefect `Event`s built here
instead of arriving over a server's stream, and a socket records what the browser would get.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.events import Event

from api.hub import Client, Hub
from api.messages import QueuePlace
from api.relay import Relay
from api.tiers import Tiers
from studio.manifest import TakeStatus
from studio.store import ProjectStore
from studio.take_events import TakeEventBase, TakeProgress, TakeStarted, TakeSucceeded
from studio.tiers import Quality
from tests.factories import RecordingSocket, add_take, odyssey, stored

PROJECT, NODE = "Project_Odyssey", "shot15"


def event(typed: TakeEventBase, *, occurred: datetime | None = None,
          event_id: uuid.UUID | None = None) -> Event:
    name, resource, payload = typed.wire()
    return Event(event=name, resource=resource, payload=payload, id=event_id or uuid.uuid4(),
                 occurred=occurred or datetime.now(UTC))


def ids(take_id: str = "t-1", **more: Any) -> dict[str, Any]:
    return {"project_id": PROJECT, "node_id": NODE, "take_id": take_id, "take_number": 1,
            "tier": Quality.standard, "task_run_id": "run-1", **more}


def sent_to_socket(store: ProjectStore,
                   script: Callable[[Relay], Awaitable[None]]) -> list[dict[str, Any]]:
    """Runs `script` against a relay with one socket open on the project; what it received."""
    async def main() -> list[dict[str, Any]]:
        hub = Hub()
        relay = Relay(store, hub, Tiers(expected=set()))
        socket = RecordingSocket()
        client = Client(socket, PROJECT)  # type: ignore[arg-type]

        async def nothing() -> list[dict[str, Any]]:
            return []

        await hub.attach(client, nothing)
        await script(relay)
        await client.close()  # flushes what was queued for the socket
        return socket.sent

    return asyncio.run(main())


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def test_progress_reaches_the_projects_sockets_and_only_rises(tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())

    async def script(relay: Relay) -> None:
        for percent in (25, 75, 50):
            await relay.handle(event(TakeProgress(**ids(), progress=percent, step="s")))

    sent = sent_to_socket(store, script)

    assert [(m["type"], m["payload"]["progress"]) for m in sent] == [
        ("server:task_progress", 25), ("server:task_progress", 75)]


def test_an_event_delivered_twice_is_sent_once(tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())

    async def script(relay: Relay) -> None:
        once = event(TakeProgress(**ids(), progress=10))
        await relay.handle(once)
        await relay.handle(once)

    assert kinds(sent_to_socket(store, script)) == ["server:task_progress"]


def test_a_take_event_this_process_emitted_itself_is_not_sent_again(tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())

    async def script(relay: Relay) -> None:
        own = event(TakeProgress(**ids(), progress=10))
        relay.mark_seen(own.id)
        await relay.handle(own)

    assert sent_to_socket(store, script) == []


def test_events_from_before_the_relay_started_are_the_streams_backfill_and_ignored(
        tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())
    old = event(TakeProgress(**ids(), progress=10),
                occurred=datetime.now(UTC) - timedelta(hours=1))

    async def script(relay: Relay) -> None:
        await relay.handle(old)

    assert sent_to_socket(store, script) == []


def test_a_success_is_announced_once_with_the_node_state_even_if_two_processes_report_it(
        tmp_path: Path) -> None:
    project = odyssey()
    take = add_take(project, NODE, TakeStatus.completed)
    store = stored(tmp_path, project)
    success = TakeSucceeded(**ids(take.id, take_number=take.number), output_path=take.path)

    async def script(relay: Relay) -> None:
        await relay.handle(event(success))
        await relay.handle(event(success))  # the same news under another event id

    sent = sent_to_socket(store, script)

    assert kinds(sent) == ["server:task_success", "server:node_state_updated"]
    assert sent[0]["payload"]["result"] == {"output_path": take.path, "take_number": 1,
                                            "take_id": take.id}


def test_news_of_a_take_after_it_ended_is_dropped(tmp_path: Path) -> None:
    project = odyssey()
    take = add_take(project, NODE, TakeStatus.completed)
    store = stored(tmp_path, project)

    async def script(relay: Relay) -> None:
        await relay.handle(event(TakeSucceeded(**ids(take.id), output_path=take.path)))
        await relay.handle(event(TakeProgress(**ids(take.id), progress=90)))
        await relay.handle(event(TakeStarted(**ids(take.id), attempt=2)))

    assert kinds(sent_to_socket(store, script)) == ["server:task_success",
                                                    "server:node_state_updated"]


def test_a_start_says_generating_with_its_attempt_and_restarts_progress(tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())

    async def script(relay: Relay) -> None:
        await relay.handle(event(TakeProgress(**ids(), progress=80)))
        await relay.handle(event(TakeStarted(**ids(), attempt=2)))  # a retry
        await relay.handle(event(TakeProgress(**ids(), progress=10)))

    sent = sent_to_socket(store, script)

    assert kinds(sent) == ["server:task_progress", "server:node_state_updated",
                           "server:task_progress"]
    assert (sent[1]["payload"]["state"], sent[1]["payload"]["attempt"]) == ("generating", 2)
    assert sent[2]["payload"]["progress"] == 10


def test_events_of_another_project_never_reach_this_projects_sockets(tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey())

    async def script(relay: Relay) -> None:
        await relay.handle(event(TakeProgress(**ids(project_id="Other"), progress=10)))

    assert sent_to_socket(store, script) == []


def test_a_queue_place_is_sent_only_while_its_take_is_still_queued(tmp_path: Path) -> None:
    project = odyssey()
    queued = add_take(project, NODE, TakeStatus.queued)
    done = add_take(project, NODE, TakeStatus.completed)
    store = stored(tmp_path, project)
    place = QueuePlace(tier=Quality.standard, position=1, reason="waiting for a standard GPU "
                       "worker (none is online yet)")

    async def script(relay: Relay) -> None:
        for take in (queued, done):  # a re-queue announced after the take ended: nothing
            await relay.publish_state(PROJECT, NODE, take.id, "run-1", place=place)

    sent = sent_to_socket(store, script)

    assert [(m["payload"]["take_id"], m["payload"]["state"]) for m in sent] == [
        (queued.id, "queued")]
