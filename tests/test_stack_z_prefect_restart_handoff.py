"""Issue 16, restarts lose nothing: Prefect's server restarts while clicks are being handed to
it. Every click becomes a take (reserved in project.json before Prefect is asked), and each take
renders exactly once — a click Prefect never got is handed out when it answers again, a run its
restart lost from the queue is handed out again, a run the worker took as the server went away
(left PENDING, never started) is handed out anew, none is failed or rendered twice.

Real processes: the supervised stack (`python -m scripts.stack`, one standard task worker on the
tiny model) against the session's Prefect server, which the test restarts. Restarting it
disturbs every other test: this module's name sorts it last (tests/conftest.py).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from scripts.local_prefect import LocalPrefectServer
from tests.api_helpers import add_t2i, assert_no_worker_online, new_project, of_type
from tests.restart_helpers import (
    Reader,
    assert_no_take_announced_after_it_ended,
    assert_rendered_once_in_prefect,
    takes,
)
from tests.stack_helpers import wait_until
from tests.supervised_stack import Stack

CLICKS = 6


@pytest.mark.timeout(1800)  # a stack start and a Prefect restart: 943 s at load 25
def test_clicks_handed_off_while_prefect_restarts_each_render_exactly_once(
        prefect_server: LocalPrefectServer, tiny_model_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    assert_no_worker_online()
    stack = Stack(tmp_path_factory.mktemp("handoff"), tiny_model_dir / "Library" / "AI_Models",
                  prefect_server, ["standard"]).start()
    try:
        stack.wait_line("ready in", timeout=300)
        with stack.http() as http:
            project_id = new_project(http, "Clicks During A Restart")
            node_id = add_t2i(http, project_id, steps=10)
            socket = stack.socket(project_id)
            reader = Reader(socket)

            def click() -> None:  # one every 0.4 s, across the server's stop and start
                for _ in range(CLICKS):
                    socket.click(node_id)
                    time.sleep(0.4)

            clicking = threading.Thread(target=click)
            clicking.start()
            time.sleep(0.5)
            prefect_server.restart(timeout=600)  # minutes on a loaded machine
            clicking.join()
            restarted = time.monotonic()

            wait_until(lambda: len(takes(http, project_id, node_id)) == CLICKS, 120,
                       f"{CLICKS} takes reserved")
            wait_until(lambda: all(t["status"] == "completed"
                                   for t in takes(http, project_id, node_id)),
                       420, "every take to complete")
            done_after = time.monotonic() - restarted
            reader.stop()
            after = takes(http, project_id, node_id)
        socket.close()
    finally:
        stack.stop()

    assert sorted(t["number"] for t in after) == list(range(1, CLICKS + 1))  # no click lost
    shot = stack.workspace / "Projects" / project_id / Path(after[0]["path"]).parent
    assert sorted(p.name for p in shot.iterdir()) == sorted(Path(t["path"]).name
                                                           for t in after)  # one file each
    for take in after:
        assert take["attempts"] == 1  # rendered once
        assert_rendered_once_in_prefect(take["task_run_id"], f"take {take['number']}")
    got = socket.received
    assert not of_type("task_failed", got)
    successes = [s["result"]["take_id"] for s in of_type("task_success", got)]
    assert len(successes) == len(set(successes))  # no result announced twice
    assert_no_take_announced_after_it_ended(got)
    print(f"\nPrefect back -> all {CLICKS} takes completed: {done_after:.1f} s "
          f"(hand-outs again: {sum(t['hand_outs'] for t in after)})")
