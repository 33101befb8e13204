"""Our retries around Prefect calls while the server is restarting: a refused connection (the
server is not there) is asked again every two seconds at most, so a take held back by a Prefect
restart is handed out within seconds of the server answering again; an overloaded server (503)
is still backed off further."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import httpx
import pytest

from tasks.prefect_retry import ABSENT_MAX_PAUSE, _pause_after, retry_transient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow  # waits for a server that comes up after 8 s
def test_a_call_made_while_the_server_is_down_succeeds_soon_after_it_is_back() -> None:
    port = _free_port()
    up_at: list[float] = []

    def come_up_later() -> None:
        time.sleep(8.0)
        server = http.server.HTTPServer(("127.0.0.1", port), _Ok)
        up_at.append(time.monotonic())
        threading.Thread(target=server.serve_forever, daemon=True).start()

    threading.Thread(target=come_up_later, daemon=True).start()

    def call() -> str:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        response.raise_for_status()
        return response.text

    assert retry_transient(call, "asking a restarting server", seconds=60) == "ok"
    answered_after = time.monotonic() - up_at[0]
    assert answered_after <= ABSENT_MAX_PAUSE + 0.5  # 15 s pauses had reached 4-8 s by now


def test_an_overloaded_server_is_backed_off_further_than_an_absent_one() -> None:
    request = httpx.Request("POST", "http://prefect/api/task_runs/")
    busy = httpx.HTTPStatusError("503", request=request,
                                 response=httpx.Response(503, request=request))
    absent = httpx.ConnectError("All connection attempts failed", request=request)

    assert max(_pause_after(absent, 6) for _ in range(50)) <= ABSENT_MAX_PAUSE
    assert min(_pause_after(busy, 6) for _ in range(50)) >= 7.5  # min(15, 2**6) x [0.5, 1]
