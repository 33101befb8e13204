"""Issue 5, access: with STUDIO_API_TOKEN set, REST and the WebSocket need it; the server will not
listen beyond loopback without one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from scripts.local_prefect import LocalPrefectServer
from tests.api_helpers import ApiServer, Socket
from tests.stack_helpers import REPO

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def api(prefect_server: LocalPrefectServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api-auth"), token=TOKEN).start()
    yield server
    server.stop()


def test_rest_without_the_token_is_refused_with_401(api: ApiServer) -> None:
    with api.client() as anonymous, api.client(token="wrong") as wrong:
        for client in (anonymous, wrong):
            response = client.get("/api/projects")
            assert response.status_code == 401
            assert "STUDIO_API_TOKEN" in response.json()["detail"]


def test_rest_with_the_token_as_header_or_query_parameter_is_served(api: ApiServer) -> None:
    with api.client(token=TOKEN) as client:
        assert client.post("/api/projects", json={"name": "Secret"}).status_code == 201
    with api.client() as client:
        assert client.get(f"/api/projects?token={TOKEN}").json()[0]["id"] == "Secret"


def test_health_and_the_openapi_document_stay_open(api: ApiServer) -> None:
    with api.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_a_websocket_without_the_token_is_closed_with_1008(api: ApiServer) -> None:
    socket = api.socket("Secret")
    with pytest.raises(ConnectionClosed) as closed:
        socket.next(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_websocket_with_the_token_works(api: ApiServer) -> None:
    socket: Socket = api.socket("Secret", query=f"?token={TOKEN}")
    socket.click("nope")
    assert socket.next(timeout=10)["payload"]["reason"] == (
        "node 'nope' does not exist in project Secret")
    socket.close()


def test_the_server_refuses_a_non_loopback_host_without_a_token() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-m", "api", "--host", "0.0.0.0", "--port", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0: set STUDIO_API_TOKEN" in done.stderr
