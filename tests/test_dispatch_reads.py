"""A click reads project.json at most twice in the API: once to check the node, pick the tier and
reserve the take (one locked edit), once to record the task run Prefect gave it.

The real dispatcher against the session's Prefect server; the store counts its reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from api.cancel import cancel_generation
from api.dispatcher import Dispatcher
from api.hub import Hub
from api.relay import Relay
from api.tiers import Tiers
from scripts.local_prefect import LocalPrefectServer
from studio.manifest import TakeStatus
from studio.workspace import Workspace
from tests.factories import CountingStore, odyssey, stored

PROJECT, NODE = "Project_Odyssey", "shot15"


def test_a_click_reads_project_json_at_most_twice(prefect_server: LocalPrefectServer,
                                                  tmp_path: Path) -> None:
    store = stored(tmp_path, odyssey(), CountingStore(Workspace(tmp_path)))
    assert isinstance(store, CountingStore)

    async def click() -> tuple[str | None, int, list[dict[str, Any]]]:
        hub = Hub()
        relay = Relay(store, hub, Tiers(expected=set()))
        relay.tiers.polled.set()  # no wait for a first look at the workers
        replies: list[dict[str, Any]] = []
        store.reads = 0
        task_run_id = await Dispatcher(store, hub, relay).start_generation(PROJECT, NODE,
                                                                          replies.append)
        reads = store.reads
        # No worker renders it here: cancelled, so no later test's worker picks it up.
        [take] = store.load(PROJECT).get_node(NODE).takes
        await cancel_generation(store, relay, PROJECT, take.id)
        return task_run_id, reads, replies

    task_run_id, reads, replies = asyncio.run(click())

    assert task_run_id is not None and replies == []
    assert reads <= 2, f"a click read project.json {reads} times"
    [take] = store.load(PROJECT).get_node(NODE).takes
    assert (take.number, take.task_run_id, take.status) == (1, task_run_id,
                                                            TakeStatus.cancelled)
