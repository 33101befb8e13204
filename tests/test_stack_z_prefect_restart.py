"""Issue 16, restarts lose nothing, fast: the whole stack stopped with takes queued and 1
generating, Prefect restarted meanwhile (its in-memory queue of background tasks is gone), the
stack started again -> all 6 takes complete exactly once (one file each, one completed Prefect
run each, no completed take announced `queued` again), the first within seconds of the tier's
worker being online (the figure is printed: run with -s).

Restarting the session's Prefect server disturbs every other test: this module's name sorts it
with the other Prefect-restart tests, after everything else (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from scripts.local_prefect import LocalPrefectServer
from studio.tiers import Quality
from tasks.availability import connected_task_workers
from tests.api_helpers import add_t2i, assert_no_worker_online, new_project, of_type
from tests.restart_helpers import (
    Reader,
    assert_no_take_announced_after_it_ended,
    assert_rendered_once_in_prefect,
    takes,
)
from tests.stack_helpers import wait_until
from tests.supervised_stack import Stack


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkerWatch:
    """When a standard task worker first shows up in Prefect's registry (wall clock)."""

    def __init__(self) -> None:
        self.online_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.online_at is None:
            try:
                if asyncio.run(connected_task_workers([Quality.standard])):
                    self.online_at = time.time()
            except Exception:  # Prefect starting: ask again
                pass
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def stopped_with_takes_queued(six: list[dict[str, Any]]) -> bool:
    """All 6 takes handed to Prefect, the first started: 1 generating and the rest queued (on a
    fast machine the first may complete before the stack stops: then at least 4 queued)."""
    statuses = [t["status"] for t in six]
    done, busy, queued = (statuses.count(s) for s in ("completed", "generating", "queued"))
    return (len(six) == 6 and all(t["task_run_id"] for t in six) and busy <= 1 and queued >= 4
            and done + busy >= 1
            and statuses == ["completed"] * done + ["generating"] * busy + ["queued"] * queued)


@pytest.mark.timeout(2400)  # two stack starts and a Prefect restart: 1403 s at load 25
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
            # 1024x1024 at 50 steps (~5 s on the tiny model): the first take is still rendering
            # while the other 5 are handed out (at 256x256 it took ~1 s and CI rendered it first).
            node_id = add_t2i(http, project_id, steps=50, size=1024)
            socket = stack.socket(project_id)
            reader = Reader(socket)
            for _ in range(6):
                socket.click(node_id)
            # The stack is stopped with 1 take generating and the others queued, each handed
            # to Prefect.
            wait_until(lambda: stopped_with_takes_queued(takes(http, project_id, node_id)),
                       180, "1 take generating and the others queued, all handed to Prefect")
            # The worker stops first (frozen, then killed by the stack's stop): it renders
            # nothing more, so the queued stay queued over the restart and the figure below is
            # real.
            first_worker = stack.freeze_child("worker-standard")
            before = takes(http, project_id, node_id)
        assert stopped_with_takes_queued(before), before
    finally:
        stack.stop()
    reader.stop(quiet=0.5)
    socket.close()
    assert_no_take_announced_after_it_ended(socket.received)
    assert not alive(first_worker)  # the stack stops its workers: none renders on unsupervised
    prefect_server.restart(timeout=600)  # what the server held in its queue is gone

    restarted = time.time()
    watch = WorkerWatch()
    stack_started = time.time()
    stack.start()
    try:
        stack.wait_line("ready in", timeout=300)
        socket = stack.socket(project_id)
        reader = Reader(socket)
        with stack.http() as http:
            wait_until(lambda: all(t["status"] == "completed"
                                   for t in takes(http, project_id, node_id)),
                       420, "all six takes to complete")
            after = takes(http, project_id, node_id)
        reader.stop()
        socket.close()
    finally:
        watch.stop()
        stack.stop()

    assert sorted(t["number"] for t in after) == [1, 2, 3, 4, 5, 6]
    assert [t["status"] for t in after] == ["completed"] * 6
    shot = stack.workspace / "Projects" / project_id / Path(after[0]["path"]).parent
    assert sorted(p.name for p in shot.iterdir()) == sorted(Path(t["path"]).name
                                                           for t in after)  # one file each
    for take in after:
        # One completed Prefect run per take, run once; the queued ones kept their run.
        assert_rendered_once_in_prefect(take["task_run_id"], f"take {take['number']}")
    was = {t["id"]: t for t in before}
    for take in after:
        if was[take["id"]]["status"] == "generating":  # its worker died with the stack:
            assert take["attempts"] == 2               # retried once as the same take, a new run
            assert take["task_run_id"] != was[take["id"]]["task_run_id"]
        else:  # queued (or completed just before the stop): the same run, run once
            assert take["task_run_id"] == was[take["id"]]["task_run_id"]
            assert take["attempts"] == 1
    got = socket.received
    assert not of_type("task_failed", got)
    successes = [s["result"]["take_id"] for s in of_type("task_success", got)]
    assert len(successes) == len(set(successes))  # each result announced once
    assert_no_take_announced_after_it_ended(got)

    assert watch.online_at is not None
    online = watch.online_at

    def at(moment: str | None) -> float:
        return datetime.fromisoformat(moment).timestamp() if moment else 0.0

    # The figures for the note (not a timed assertion: the load decides them). Every take not
    # completed before the stop started after the restart: none rendered while it was stopped.
    started = sorted(at(t["started_at"]) for t in after if was[t["id"]]["status"] != "completed")
    queued = sorted(at(t["started_at"]) for t in after if was[t["id"]]["status"] == "queued")
    assert started[0] > restarted
    last = max(at(t["finished_at"]) for t in after)
    print(f"\nworker online (Prefect's registry) -> first take rendering: "
          f"{started[0] - online:.1f} s; -> first of the 5 queued takes rendering: "
          f"{queued[0] - online:.1f} s; -> all 6 completed: {last - online:.1f} s "
          f"(stack start -> worker online: {online - stack_started:.1f} s)")
