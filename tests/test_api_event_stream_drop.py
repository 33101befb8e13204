"""Issue 16, events keep up: the API's subscription to Prefect's event stream is cut while takes
render (its connections to Prefect dropped and refused, as a network blip would; the worker
keeps talking to Prefect). The API reconnects and re-syncs from project.json and Prefect: every
take's result reaches the socket once, and nothing is handed to Prefect again — a dropped
stream is not a Prefect restart.

Real processes: the API (`python -m api`) talks to the session's Prefect server through a proxy
the test cuts (tests/cut_proxy.py); one standard task worker on the tiny model talks to it
directly.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect.client.schemas.objects import StateType

from scripts.local_prefect import LocalPrefectServer, free_port
from studio.tiers import Quality
from tests.api_helpers import Socket, add_t2i, assert_no_worker_online, is_, new_project, of_type
from tests.cut_proxy import CutProxy
from tests.restart_helpers import (
    Reader,
    assert_no_take_announced_after_it_ended,
    runs_of,
    takes,
)
from tests.stack_helpers import Proc, start_tier_worker, studio_env, wait_until

pytestmark = pytest.mark.timeout(900)


def test_a_dropped_event_stream_is_re_synced_without_handing_anything_out_again(
        prefect_server: LocalPrefectServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert_no_worker_online()
    env = studio_env(tmp_path / "workspace", tiny_model_dir / "Library" / "AI_Models")
    proxy = CutProxy(prefect_server.port)
    worker = start_tier_worker(Quality.standard, env, tmp_path / "worker.log")
    port = free_port()
    api = Proc([sys.executable, "-m", "api", "--port", str(port), "--log-level", "info"],
               {**env, "PREFECT_API_URL": proxy.api_url, "STUDIO_RECONCILE_SECONDS": "1"},
               tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    socket: Socket | None = None
    try:
        def ready() -> bool:
            assert api.popen.poll() is None, api.output()[-2000:]
            try:
                health = httpx.get(f"{url}/readyz", timeout=10)
            except httpx.HTTPError:
                return False
            return health.status_code == 200 and health.json().get("relay") == "connected"

        wait_until(ready, 180, "the API to be ready")
        with httpx.Client(base_url=url, timeout=30) as http:
            project_id = new_project(http, "Dropped Stream")
            node_id = add_t2i(http, project_id, steps=40)
            socket = Socket(f"ws://127.0.0.1:{port}/ws/{project_id}")
            for _ in range(3):
                socket.click(node_id)
            handed = wait_until(
                lambda: len(runs := [t for t in takes(http, project_id, node_id)
                                     if t["task_run_id"]]) == 3 and runs, 120,
                "three takes handed to Prefect")
            before = {t["id"]: t for t in handed}
            first = socket.until(
                lambda m: is_("task_progress", node_id=node_id)(m)
                and m["payload"]["progress"] >= 50, timeout=180,
                what="the first take half rendered")[-1]["payload"]["take_id"]
            streams = proxy.event_streams
            reader = Reader(socket)  # from here on the test waits on other things

            proxy.cut(refuse_for=3600)  # down until restored: its last events are missed
            wait_until(lambda: next(t for t in takes(http, project_id, node_id)
                                    if t["id"] == first)["status"] == "completed",
                       180, "the first take to complete while the stream is down")
            time.sleep(3.0)  # its success event is emitted meanwhile
            proxy.restore()

            wait_until(lambda: all(t["status"] == "completed"
                                   for t in takes(http, project_id, node_id)),
                       300, "every take to complete")
            reader.stop()
            after = takes(http, project_id, node_id)
    finally:
        if socket is not None:
            socket.close()
        api.kill()
        worker.kill()
        proxy.close()

    assert proxy.event_streams > streams  # the API really lost its stream and reconnected
    got = socket.received
    assert not of_type("task_failed", got)
    successes = [s["result"]["take_id"] for s in of_type("task_success", got)]
    assert sorted(successes) == sorted(before)  # every result reached the socket, once
    for take in after:
        # Nothing handed to Prefect again: the same run, one hand-out, rendered once.
        was = before[take["id"]]
        assert (take["task_run_id"], take["hand_outs"], take["attempts"]) == (
            was["task_run_id"], 0, 1)
        assert runs_of(take["task_run_id"]) == [(StateType.COMPLETED, 1)]
    assert_no_take_announced_after_it_ended(got)
