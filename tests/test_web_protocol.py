"""The canvas's WebSocket types are the server's: web/src/lib/protocol.schema.json is what the
API publishes at /api/ws-protocol (api/messages.py), and web/src/lib/protocol.ts is what
json-schema-to-typescript makes of it (`npm run protocol` refreshes both). A changed message
model fails here until the canvas is regenerated, and the canvas must still type-check against it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from studio.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"
SCHEMA = WEB / "src" / "lib" / "protocol.schema.json"
TYPES = WEB / "src" / "lib" / "protocol.ts"
REGENERATE = "run `npm --prefix web run protocol` and commit web/src/lib/protocol.*"


def _run(cmd: list[str], cwd: Path = REPO,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", name="web_deps")
def web_deps_fixture() -> None:
    """web/node_modules as web/package-lock.json pins it (npm ci when it does not)."""
    done = _run(["bash", "scripts/setup_web.sh", "deps"])
    if done.returncode != 0:
        pytest.fail(f"scripts/setup_web.sh deps failed:\n{done.stdout}\n{done.stderr}")


def test_the_canvas_schema_is_the_one_the_server_publishes(tmp_path: Path) -> None:
    app = create_app(Settings(workspace=Workspace(tmp_path)))
    published = TestClient(app, base_url="http://127.0.0.1").get("/api/ws-protocol")
    published.raise_for_status()
    committed = json.loads(SCHEMA.read_text(encoding="utf-8"))

    for direction in ("server", "client"):
        assert sorted(committed[direction]) == sorted(published.json()[direction]), (
            f"the {direction} message types changed: {REGENERATE}")
        for kind, schema in published.json()[direction].items():
            assert committed[direction][kind] == schema, f"{kind} changed: {REGENERATE}"
    assert committed == published.json(), REGENERATE


@pytest.mark.slow
def test_the_committed_types_are_what_the_schema_generates(web_deps: None) -> None:
    done = _run(["node", "web/scripts/protocol-types.mjs", str(SCHEMA), "-"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == TYPES.read_text(encoding="utf-8"), (
        f"web/src/lib/protocol.ts was edited by hand or is stale: {REGENERATE}")


@pytest.mark.slow
def test_the_canvas_type_checks_against_the_generated_types(web_deps: None) -> None:
    done = _run(["npm", "run", "--silent", "check", "--", "--output", "machine"], cwd=WEB)
    errors = [line for line in done.stdout.splitlines() if " ERROR " in line]
    assert done.returncode == 0 and not errors, "\n".join(errors) or done.stdout + done.stderr
