"""Issue 15: nobody else drives the studio. A page on another site cannot open the WebSocket or
change anything, a rebinding name is not answered, limits hold at the edge (prompt, body, frame,
nesting, path), names are Unicode but never control characters or device names, a project
folder linked outside the workspace is not served, and the token never reaches a log.

A real uvicorn (in a thread, and `python -m api` as a process for its log), a real WebSocket
client, the session's Prefect server; no task worker (nothing here may render).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from api.auth import SESSION_COOKIE, session_value
from scripts.local_prefect import LocalPrefectServer, free_port
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import Quality
from tests.api_helpers import ApiServer, add_t2i, new_project, of_type
from tests.stack_helpers import Proc, wait_until

TOKEN = "tr0ub4dor-and-3"
PROXY_ORIGIN = "https://studio.example"


@pytest.fixture(scope="module")
def api(prefect_server: LocalPrefectServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path_factory.mktemp("api-security"),
                       allowed_origins=[PROXY_ORIGIN]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def project(http: httpx.Client) -> tuple[str, str]:
    project_id = new_project(http, "Guarded")
    return project_id, add_t2i(http, project_id)


def takes(http: httpx.Client, project_id: str, node_id: str) -> list[dict[str, object]]:
    response = http.get(f"/api/projects/{project_id}/nodes/{node_id}/takes")
    assert response.status_code == 200, response.text
    return list(response.json())


# --- Origin and Host ------------------------------------------------------------------------


def test_a_websocket_from_a_foreign_origin_is_refused_and_starts_nothing(
        api: ApiServer, http: httpx.Client, project: tuple[str, str]) -> None:
    project_id, t2i = project
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"ws://127.0.0.1:{api.port}/ws/{project_id}", origin="http://evil.example",
                     open_timeout=10) as ws:
            ws.send(json.dumps({"type": "client:start_generation",
                                "payload": {"node_id": t2i}}))
            ws.recv(timeout=5)
    assert refused.value.response.status_code == 403
    assert takes(http, project_id, t2i) == []


@pytest.mark.parametrize("origin", ["own", PROXY_ORIGIN])
def test_a_websocket_from_the_canvas_or_a_listed_origin_is_served(
        api: ApiServer, project: tuple[str, str], origin: str) -> None:
    project_id, _ = project
    origin = api.url if origin == "own" else origin
    with connect(f"ws://127.0.0.1:{api.port}/ws/{project_id}", origin=origin,  # type: ignore[arg-type]
                 open_timeout=10) as ws:
        ws.send(json.dumps({"type": "client:start_generation", "payload": {"node_id": "nope"}}))
        reply = json.loads(ws.recv(timeout=10))
    assert reply["type"] == "server:error" and "does not exist" in reply["payload"]["reason"]


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:1"])
def test_a_change_from_a_foreign_origin_is_refused_with_403(
        http: httpx.Client, origin: str) -> None:
    response = http.post("/api/projects", json={"name": "Planted"}, headers={"Origin": origin})
    assert response.status_code == 403
    assert "STUDIO_ALLOWED_ORIGINS" in response.json()["detail"]
    assert "Planted" not in {p["id"] for p in http.get("/api/projects").json()}


def test_reading_and_changing_from_the_canvas_origin_is_served(api: ApiServer,
                                                              http: httpx.Client) -> None:
    own = {"Origin": api.url}
    assert http.post("/api/projects", json={"name": "From Canvas"}, headers=own).status_code == 201
    assert http.get("/api/projects", headers={"Origin": "http://evil.example"}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io"])
def test_a_request_for_a_foreign_host_is_refused(api: ApiServer, http: httpx.Client,
                                                 host: str) -> None:
    response = http.get("/api/projects", headers={"Host": host.format(port=api.port)})
    assert response.status_code == 400
    assert "STUDIO_ALLOWED_HOSTS" in response.json()["detail"]


def test_a_websocket_for_a_foreign_host_is_refused(api: ApiServer,
                                                   project: tuple[str, str]) -> None:
    # What a rebinding page does: its own name resolved to this machine.
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://evil.example:{api.port}/ws/{project[0]}", sock=sock, open_timeout=10)
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}"])
def test_the_loopback_names_are_answered_on_any_port(api: ApiServer, http: httpx.Client,
                                                     host: str) -> None:
    response = http.get("/api/projects", headers={"Host": host.format(port=api.port)})
    assert response.status_code == 200


def test_no_page_may_frame_the_studio_and_project_files_are_served_as_data(
        http: httpx.Client, project: tuple[str, str]) -> None:
    page = http.get("/api/projects")
    served = http.get(f"/api/projects/{project[0]}/files/project.json")

    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert served.status_code == 200
    assert served.headers["content-security-policy"].startswith("sandbox")
    assert served.headers["x-content-type-options"] == "nosniff"


# --- limits at the edge ---------------------------------------------------------------------


def test_a_1mb_prompt_is_refused_with_422_and_no_take_is_reserved(
        api: ApiServer, http: httpx.Client, project: tuple[str, str]) -> None:
    project_id, t2i = project
    huge = "a" * 1_000_000
    manifest = api.settings.workspace.projects_dir / project_id / "project.json"
    size_before = manifest.stat().st_size

    created = http.post(f"/api/projects/{project_id}/nodes",
                        json={"node_type": "text_to_image", "params": {"prompt": huge}})
    patched = http.patch(f"/api/projects/{project_id}/nodes/{t2i}",
                         json={"params": {"negative_prompt": huge}})

    for response in (created, patched):
        assert response.status_code == 422
        assert "at most 4000 characters" in response.json()["detail"]
        assert len(response.content) < 10_000  # the reason, not the prompt echoed back
    assert manifest.stat().st_size == size_before
    assert takes(http, project_id, t2i) == []


def test_a_prompt_that_only_grows_too_long_with_its_style_reserves_no_take(
        api: ApiServer, http: httpx.Client) -> None:
    project_id = new_project(http, "Long Style")
    t2i = add_t2i(http, project_id, prompt="b" * 3000)
    style = http.post(f"/api/projects/{project_id}/assets",
                      json={"kind": "style", "name": "Wordy", "style_prompt": "c" * 3000})
    assert style.status_code == 201, style.text
    node = http.post(f"/api/projects/{project_id}/nodes",
                     json={"node_type": "style", "params": {"asset_id": style.json()["id"]}})
    edge = http.post(f"/api/projects/{project_id}/edges", json={
        "source": node.json()["id"], "source_socket": "asset", "target": t2i,
        "target_socket": "style"})
    assert edge.status_code == 201, edge.text
    store = ProjectStore(api.settings.workspace)

    with pytest.raises(ValueError, match="6002 characters; FLUX takes at most 4000"):
        prepare_take(store, project_id, t2i, quality_requested=Quality.standard,
                     quality_used=Quality.standard)
    assert takes(http, project_id, t2i) == []


def test_a_body_over_the_limit_is_refused_with_413_before_parsing(
        http: httpx.Client, project: tuple[str, str]) -> None:
    body = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = http.post("/api/projects", content=body,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "STUDIO_MAX_BODY_BYTES" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield body

    chunked = http.post("/api/projects", content=chunks(),
                        headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_100000_nested_brackets_get_a_server_error_and_the_socket_still_answers(
        api: ApiServer, project: tuple[str, str]) -> None:
    ws = api.socket(project[0])

    ws.send("[" * 100_000)
    ws.send("[" * 5_000 + "]" * 5_000)  # under the size limit, far too deep
    ws.click("nope")
    got = ws.until(lambda m: "nope" in m["payload"].get("reason", ""), timeout=20,
                   what="the answer to a click after the bad frames")
    ws.close()

    too_big, too_deep, answered = of_type("error", got)
    assert "a message is at most 65536 bytes; this one is 100000" in too_big["reason"]
    assert "nests at most 32 levels deep; this one 5000" in too_deep["reason"]
    assert answered["reason"] == f"node 'nope' does not exist in project {project[0]}"


def test_a_300_character_path_segment_is_404_and_the_connection_stays(
        http: httpx.Client, project: tuple[str, str]) -> None:
    project_id = project[0]
    response = http.get(f"/api/projects/{project_id}/files/03_Renders/{'x' * 300}.png")
    assert response.status_code == 404
    assert "does not exist" in response.json()["detail"]
    assert http.get(f"/api/projects/{project_id}/files/project.json").status_code == 200


def test_a_symlink_loop_in_a_project_is_refused_not_an_error(
        api: ApiServer, http: httpx.Client) -> None:
    project_id = new_project(http, "Loops")
    folder = api.settings.workspace.projects_dir / project_id
    (folder / "loop").symlink_to(folder / "loop")
    response = http.get(f"/api/projects/{project_id}/files/loop/x.png")
    assert response.status_code == 400
    assert str(folder) not in response.text  # says why, without the server's paths


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["東京の夜", "Οδύσσεια", "नमस्ते दुनिया", "Café_noir-2"])
def test_a_project_name_in_any_script_is_accepted_and_shown(http: httpx.Client,
                                                            name: str) -> None:
    response = http.post("/api/projects", json={"name": name})
    assert response.status_code == 201, response.text
    project = response.json()
    assert project["name"] == name
    assert http.get(f"/api/projects/{project['id']}").json()["name"] == name
    assert project["id"].isascii()  # the folder name, derived safely


@pytest.mark.parametrize(("name", "why"), [
    ("bad\x00name", "U+0000"),
    ("two\nlines", "U+000A"),
    ("right\u202eto left", "U+202E"),
    ("CON", "device name on Windows"),
    ("lpt1", "device name on Windows"),
    ("a/../b", "'/'"),
    ("x" * 101, "at most 100"),
])
def test_a_project_name_with_control_characters_or_a_device_name_is_refused(
        http: httpx.Client, project: tuple[str, str], name: str, why: str) -> None:
    created = http.post("/api/projects", json={"name": name})
    renamed = http.patch(f"/api/projects/{project[0]}", json={"name": name})
    for response in (created, renamed):
        assert response.status_code == 422
        assert why in response.json()["detail"]


# --- the workspace's edge -------------------------------------------------------------------


def test_a_project_folder_linked_outside_the_workspace_is_not_served(
        api: ApiServer, http: httpx.Client, project: tuple[str, str],
        tmp_path: Path) -> None:
    projects = api.settings.workspace.projects_dir
    outside = tmp_path / "Elsewhere"
    outside.mkdir()
    shutil.copy(projects / project[0] / "project.json", outside)
    manifest = json.loads((outside / "project.json").read_text())
    (outside / "project.json").write_text(json.dumps({**manifest, "id": "Elsewhere"}))
    (outside / "secret.png").write_bytes(b"not yours")
    (projects / "Elsewhere").symlink_to(outside, target_is_directory=True)

    assert http.get("/api/projects/Elsewhere/files/secret.png").status_code == 404
    assert http.get("/api/projects/Elsewhere").status_code == 404
    assert "Elsewhere" not in {p["id"] for p in http.get("/api/projects").json()}


# --- the token ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_api(prefect_server: LocalPrefectServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    web = tmp_path_factory.mktemp("web-dist")
    (web / "index.html").write_text("<!doctype html><title>Studio</title>")
    server = ApiServer(tmp_path_factory.mktemp("api-security-token"), token=TOKEN,
                       web_dist=web).start()
    yield server
    server.stop()


def test_opening_the_canvas_with_the_token_trades_it_for_a_session_cookie(
        token_api: ApiServer) -> None:
    with token_api.client() as browser:
        opened = browser.get(f"/?token={TOKEN}")
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert TOKEN not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        browser.cookies.set(SESSION_COOKIE, opened.cookies[SESSION_COOKIE])

        assert browser.get("/").status_code == 200
        assert browser.post("/api/projects", json={"name": "Cookie"}).status_code == 201
        with connect(f"ws://127.0.0.1:{token_api.port}/ws/Cookie", open_timeout=10,
                     additional_headers={"Cookie": f"{SESSION_COOKIE}="
                                         f"{opened.cookies[SESSION_COOKIE]}"}) as ws:
            ws.send(json.dumps({"type": "client:start_generation",
                                "payload": {"node_id": "x"}}))
            reply = json.loads(ws.recv(timeout=10))
            while reply["type"] != "server:error":  # past the project's snapshot
                reply = json.loads(ws.recv(timeout=10))
            assert "does not exist" in reply["payload"]["reason"]


@pytest.mark.parametrize("cookie", ["forged", "expired", "other token"])
def test_a_forged_or_expired_or_foreign_session_cookie_is_refused(
        token_api: ApiServer, cookie: str) -> None:
    value = {"forged": "99999999999.deadbeef",
             "expired": session_value(TOKEN, now=1_000_000),
             "other token": session_value("another-studio's-token")}[cookie]
    with token_api.client() as client:
        client.cookies.set(SESSION_COOKIE, value)
        assert client.get("/api/projects").status_code == 401
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with connect(f"ws://127.0.0.1:{token_api.port}/ws/Cookie", open_timeout=10,
                     additional_headers={"Cookie": f"{SESSION_COOKIE}={value}"}) as ws:
            ws.recv(timeout=10)


def test_the_access_log_never_holds_the_token(prefect_server: LocalPrefectServer,
                                              tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "STUDIO_WORKSPACE": str(tmp_path / "workspace"),
           "STUDIO_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    api = Proc([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "info"], env, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 90, "python -m api to answer")
        assert httpx.get(f"{url}/api/projects?token={TOKEN}", timeout=10).status_code == 200
        assert httpx.get(f"{url}/api/projects?x=1&token={TOKEN}&y=2",
                         timeout=10).status_code == 200
        with connect(f"ws://127.0.0.1:{port}/ws/Nope?token={TOKEN}", open_timeout=10) as ws:
            ws.recv(timeout=10)
        wait_until(lambda: "/ws/Nope" in api.output(), 10, "the WebSocket in the log")
    finally:
        api.kill()
    log = api.output()
    assert "GET /api/projects?token=[redacted] HTTP/1.1" in log
    assert "/api/projects?x=1&token=[redacted]&y=2" in log
    assert "/ws/Nope?token=[redacted]" in log
    assert TOKEN not in log


def test_the_public_url_is_an_allowed_host_and_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.settings import Settings

    monkeypatch.setenv("STUDIO_PUBLIC_URL", "https://studio.example.com")
    settings = Settings()
    assert "studio.example.com" in settings.hosts()
    assert "https://studio.example.com" in settings.origins()
    assert "evil.example" not in settings.hosts()
