"""Assets through the REST API: characters and styles made, changed and deleted by the studio (not
written into project.json by hand), their LoRA paths checked against the workspace, and the
workspace's LoRA files listed for the canvas's picker.

The session's Prefect server and the API under uvicorn; no task worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.local_prefect import LocalPrefectServer
from studio.nodes import ASPECT_PRESETS
from tests.api_helpers import ApiServer, new_project

ALEX = "Library/LoRAs/alex.safetensors"


@pytest.fixture(scope="module")
def api(prefect_server: LocalPrefectServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    workspace = tmp_path_factory.mktemp("api-assets")
    loras = workspace / "Library" / "LoRAs"
    (loras / "styles").mkdir(parents=True)
    (loras / "alex.safetensors").write_bytes(b"\0" * 1000)  # only its existence is checked here
    (loras / "styles" / "noir.safetensors").write_bytes(b"\0" * 24)
    (loras / "readme.txt").write_text("LoRAs go here")
    outside = tmp_path_factory.mktemp("not-the-workspace") / "outside.safetensors"
    outside.write_bytes(b"\0")
    (loras / "escape.safetensors").symlink_to(outside)
    (workspace / "Library" / "AI_Models").mkdir(parents=True)
    (workspace / "Library" / "AI_Models" / "model.safetensors").write_bytes(b"\0")
    server = ApiServer(workspace).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def project_id(http: httpx.Client) -> str:
    return new_project(http, "Assets")


def create(http: httpx.Client, project_id: str, **body: object) -> httpx.Response:
    return http.post(f"/api/projects/{project_id}/assets", json=body)


def test_a_character_with_a_lora_that_exists_is_created_and_listed(
        http: httpx.Client, project_id: str) -> None:
    response = create(http, project_id, kind="character", name="Alex", lora_path=ALEX,
                      lora_weight=0.8, trigger_words=[" alexchar ", "", "hero"])

    assert response.status_code == 201, response.text
    asset = response.json()
    assert len(asset.pop("id")) == 36  # a UUID the server made
    assert asset == {"kind": "character", "name": "Alex", "lora_path": ALEX, "lora_weight": 0.8,
                     "trigger_words": ["alexchar", "hero"], "style_prompt": ""}
    listed = http.get(f"/api/projects/{project_id}/assets").json()
    assert [a["name"] for a in listed] == ["Alex"]
    assert http.get(f"/api/projects/{project_id}").json()["assets"] == listed


@pytest.mark.parametrize(("lora_path", "reason"), [
    ("Library/LoRAs/nobody.safetensors", "does not exist"),
    ("../outside.safetensors", "must be relative to the workspace root and stay inside it"),
    ("/etc/passwd.safetensors", "must be relative to the workspace root and stay inside it"),
    ("Library/LoRAs/escape.safetensors", "must be relative to the workspace root and stay inside"),
    ("Library/LoRAs/readme.txt", "is not a .safetensors file"),
])
def test_a_lora_path_that_is_missing_leaves_the_workspace_or_is_not_safetensors_is_refused(
        http: httpx.Client, project_id: str, lora_path: str, reason: str) -> None:
    before = http.get(f"/api/projects/{project_id}/assets").json()

    response = create(http, project_id, kind="character", name="Nobody", lora_path=lora_path)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert f"lora_path {lora_path!r} {reason}" in detail
    assert "LoRA files go in Library/LoRAs/" in detail  # and where they go instead
    assert http.get(f"/api/projects/{project_id}/assets").json() == before


@pytest.mark.parametrize("body", [
    {"kind": "style", "name": "Noir"},
    {"kind": "style", "name": "Noir", "style_prompt": "   "},
])
def test_a_style_without_a_style_prompt_is_refused(http: httpx.Client, project_id: str,
                                                   body: dict[str, str]) -> None:
    response = create(http, project_id, **body)
    assert response.status_code == 422
    assert "a style asset needs a style_prompt" in response.json()["detail"]


def test_a_character_without_a_lora_and_a_bad_body_are_refused_with_reasons(
        http: httpx.Client, project_id: str) -> None:
    response = create(http, project_id, kind="character", name="Ghost")
    assert response.status_code == 422
    assert "a character asset needs a lora_path" in response.json()["detail"]
    response = create(http, project_id, kind="prop", name="Chair", lora_weight=9)
    assert response.status_code == 422
    assert "body.kind" in response.json()["detail"] and "body.lora_weight" in response.json()[
        "detail"]
    assert create(http, "No_Such_Project", kind="style", name="X",
                  style_prompt="x").status_code == 404


def test_a_style_is_changed_and_deleted_once_no_node_refers_to_it(
        http: httpx.Client, project_id: str) -> None:
    style = create(http, project_id, kind="style", name="Noir", style_prompt="film noir").json()
    url = f"/api/projects/{project_id}/assets/{style['id']}"
    assert style["lora_path"] is None  # a style's LoRA is optional

    changed = http.patch(url, json={"name": "Neo-noir",
                                    "lora_path": "Library/LoRAs/styles/noir.safetensors"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["style_prompt"]) == ("Neo-noir", "film noir")
    assert http.patch(url, json={"style_prompt": ""}).status_code == 422
    assert http.patch(url, json={"lora_path": "../x.safetensors"}).status_code == 422
    assert http.patch(url, json={"lora_path": None}).json()["lora_path"] is None

    node = http.post(f"/api/projects/{project_id}/nodes",
                     json={"node_type": "style", "title": "Look",
                           "params": {"asset_id": style["id"]}}).json()
    refused = http.delete(url)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (f"style 'Neo-noir' is still used by node {node['id']} "
                                        '("Look"); delete those nodes first')
    assert http.get(url).status_code == 200

    http.delete(f"/api/projects/{project_id}/nodes/{node['id']}").raise_for_status()
    assert http.delete(url).status_code == 204
    assert http.get(url).status_code == 404
    assert http.delete(url).status_code == 404


def test_two_assets_of_a_kind_may_not_share_a_name(http: httpx.Client, project_id: str) -> None:
    create(http, project_id, kind="style", name="Pastel", style_prompt="pastel colours")
    response = create(http, project_id, kind="style", name="pastel", style_prompt="soft")
    assert response.status_code == 409
    assert "already has a style named 'Pastel'" in response.json()["detail"]


def test_loras_lists_the_safetensors_files_under_library_loras(http: httpx.Client) -> None:
    response = http.get("/api/loras")
    assert response.status_code == 200
    # Not the .txt, not the symlink out of the workspace, not a model outside Library/LoRAs.
    assert response.json() == [{"path": ALEX, "size": 1000},
                               {"path": "Library/LoRAs/styles/noir.safetensors", "size": 24}]


def test_the_node_types_schema_gives_each_aspect_presets_pixel_size(http: httpx.Client) -> None:
    schema = http.get("/api/node-types").json()["text_to_image"]["params"]
    presets = schema["x-aspect-presets"]
    assert presets == {name: list(size) for name, size in ASPECT_PRESETS.items()}
    assert presets["16:9"] == [1344, 768]
    assert set(presets) | {"custom"} == set(schema["properties"]["preset"]["enum"])


def test_a_workspace_without_library_loras_lists_none(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings
    from studio.workspace import Workspace

    # Addressed by a loopback name: the API answers no other Host (docs/security.md).
    client = TestClient(create_app(Settings(workspace=Workspace(tmp_path / "bare"))),
                        base_url="http://127.0.0.1")
    assert client.get("/api/loras").json() == []
