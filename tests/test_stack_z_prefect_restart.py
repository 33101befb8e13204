"""Issue 16, restarts lose nothing, fast: the whole stack stopped with 5 takes queued and 1
generating, Prefect restarted meanwhile (its in-memory queue of background tasks is gone), the
stack started again -> all 6 takes complete exactly once, the first within seconds of the tier's
worker being online.

Restarting the session's Prefect server disturbs every other test: this module's name sorts it
with the other Prefect-restart test, after everything else (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from scripts.local_prefect import LocalPrefectServer
from tests.api_helpers import add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.supervised_stack import Stack


def run_count(task_run_id: str) -> int:
    async def read() -> int:
        async with get_client() as client:
            return (await client.read_task_run(uuid.UUID(task_run_id))).run_count

    return asyncio.run(read())


# Known failure, issue 16 stays open for it: in the fresh-clone run of 2026-12-02 only 3 of the 6
# takes completed within 420 s after the restart, and a completed take was announced `queued`
# again (the reconciler's hand-out after the restart). Not run until fixed: it costs ~10 min.
@pytest.mark.xfail(run=False, strict=True,
                   reason="issue 16: takes queued across a whole-stack restart do not all complete")
@pytest.mark.timeout(1500)  # two stack starts and a Prefect restart, on a loaded machine
def test_a_stack_stopped_with_takes_queued_renders_each_exactly_once_after_a_restart(
        prefect_server: LocalPrefectServer, tiny_model_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    assert_no_worker_online()
    stack = Stack(tmp_path_factory.mktemp("restarted"), tiny_model_dir / "Library" / "AI_Models",
                  prefect_server, ["standard"]).start()
    try:
        stack.wait_line("ready in", timeout=300)
        with stack.http() as http:
            project_id = new_project(http, "Stopped With Takes")
            node_id = add_t2i(http, project_id, steps=30)
        socket = stack.socket(project_id)
        for _ in range(6):
            socket.click(node_id)
        socket.until(is_("task_progress", node_id=node_id), timeout=120,
                     what="the first take to render")
        socket.close()
    finally:
        stack.stop()
    prefect_server.restart()  # what the server held in its queue is gone

    stack.start()
    ready = stack.wait_line("ready in", timeout=300)
    online = stack.started_at + ready
    socket = stack.socket(project_id)
    successes: list[dict] = []

    def track(message: dict) -> bool:
        if is_("task_success", node_id=node_id)(message):
            successes.append(message["payload"])
            if len(successes) == 1:
                track.first = time.monotonic()  # type: ignore[attr-defined]
        return len({s["result"]["take_id"] for s in successes}) == 6

    try:
        with stack.http() as http:
            already = [t for t in http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes")
                       .json() if t["status"] == "completed"]
        if len(already) < 6:
            got = socket.until(track, timeout=420, what="all six takes to complete")
            got += socket.quiet_for(2.0)
        else:
            got = []
        with stack.http() as http:
            takes = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes").json()
    finally:
        socket.close()
        stack.stop()

    assert [t["status"] for t in takes] == ["completed"] * 6
    assert sorted(t["number"] for t in takes) == [1, 2, 3, 4, 5, 6]
    assert not of_type("task_failed", got)
    shot = stack.workspace / "Projects" / project_id / Path(takes[0]["path"]).parent
    assert len(list(shot.iterdir())) == 6  # one file per take, nothing half-written
    for take in takes:
        assert run_count(take["task_run_id"]) == 1  # each run rendered once
    first = getattr(track, "first", None)
    if first is not None:
        print(f"\nworker online ('ready') -> first queued take rendered: {first - online:.1f} s")
