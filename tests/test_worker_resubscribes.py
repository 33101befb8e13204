"""A task worker outlives a Prefect server that is restarting: when the server accepts the
connection but closes it mid-handshake (or answers too late), the worker subscribes again in the
same process, its pipeline still loaded, instead of exiting and loading torch and the model all
over again (minutes on a loaded machine) while its tier's takes wait.

Real parts: the worker process (`serve_tier`, Prefect's task worker) against a TCP listener
that closes every connection it accepts, which is what a server going down or coming up does
to a handshake. Prefect's own reconnect loop covers only refused and dropped connections.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.worker import serve_until_stopped
from tests.stack_helpers import REPO


@pytest.fixture
def closing_listener() -> Iterator[int]:
    """A port whose connections are closed as soon as they are accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(50)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.mark.slow  # a worker process: seconds to import Prefect
def test_a_worker_whose_handshake_fails_subscribes_again_in_the_same_process(
        closing_listener: int, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{closing_listener}/api",
           "STUDIO_WORKSPACE": str(tmp_path), "PREFECT_LOGGING_LEVEL": "WARNING"}
    worker = subprocess.Popen(
        [sys.executable, "-c",
         "from studio.tiers import Quality; from tasks.worker import serve_tier; "
         "serve_tier(Quality.standard, warm=False)"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        assert worker.stdout is not None
        lines.extend(worker.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    again = "lost Prefect's task subscription (InvalidMessage"
    try:
        deadline = time.monotonic() + 120  # importing Prefect takes seconds on a loaded machine
        while (sum(again in line for line in lines) < 3 and time.monotonic() < deadline
               and worker.poll() is None):
            time.sleep(0.2)
        alive = worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)

    assert alive, f"the worker exited on a failed handshake:\n{out[-3000:]}"
    [pid] = {line.split("]")[0] for line in lines if line.startswith("[worker ")}
    resubscribed = [line for line in lines if again in line]
    assert len(resubscribed) >= 3, out[-3000:]  # it kept trying, in one process
    assert all(line.startswith(pid) and "pipeline kept" in line for line in resubscribed)


def test_anything_but_a_connection_failure_still_ends_the_worker() -> None:
    calls = []

    def serve_once() -> None:
        calls.append(1)
        raise ValueError("a bug in the worker")

    with pytest.raises(ValueError, match="a bug in the worker"):
        serve_until_stopped(serve_once, pauses=(0.0,))
    assert calls == [1]  # not retried


def test_a_connection_failure_inside_prefects_exception_group_is_retried() -> None:
    calls = []

    def serve_once() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ExceptionGroup("unhandled errors in a TaskGroup",
                                 [TimeoutError("timed out during opening handshake")])

    serve_until_stopped(serve_once, pauses=(0.0,))

    assert len(calls) == 3
