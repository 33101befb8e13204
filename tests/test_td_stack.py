"""Issue 12: TDs and ops on the stock stack (`python -m scripts.stack --demo`), started with
nothing but the system's binaries on PATH, so only the product itself can find its interpreter.

Batches go through the `batch_takes/local` deployment, as from the Prefect UI; the stack's own
Prefect server (with its UI and its automation services) is the one the tests talk to.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prometheus_client.parser import text_string_to_metric_families

from scripts.local_prefect import free_port
from scripts.stack import make_plan, parse_args
from studio.manifest import Asset, Edge, TakeStatus, new_id, new_node
from studio.store import ProjectStore
from studio.workspace import Workspace
from tests.stack_helpers import REPO, Proc, add_text_to_image, wait_until

# Slow on 2 shared cores: the first test also waits for the whole stack to start (~3 min).
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1500)]

TOKEN = "td-stack-secret"
SYSTEM_PATH = "/usr/bin:/bin"
ARTIFACTS = REPO / "test-artifacts"


@dataclass
class StockStack:
    api: str
    prefect_api: str
    prefect_ui: str
    workspace: Path
    env: dict[str, str]
    proc: Proc

    @property
    def store(self) -> ProjectStore:
        return ProjectStore(Workspace(self.workspace))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", timeout=30, **kwargs)

    def batch(self, **parameters: Any) -> Any:
        return run_deployment("batch_takes/local", parameters=parameters, timeout=600,
                              poll_interval=2)


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[StockStack]:
    root = tmp_path_factory.mktemp("stock-stack")
    workspace = root / "workspace"
    # The demo model the stack would build on first start, copied in to save a minute.
    shutil.copytree(tiny_model_dir / "Library", workspace / ".studio" / "demo-models" / "Library")
    api_port, prefect_port = free_port(), free_port()
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "STUDIO_WORKSPACE": str(workspace),
        "STUDIO_API_TOKEN": TOKEN,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    args = ["--demo", "--tiers", "standard", "--port", str(api_port),
            "--prefect-port", str(prefect_port)]
    # The stack's own Prefect server, started first with more patience than the stack's 180 s
    # (a cold server on two shared cores can take longer); the stack then reuses it, as it does
    # any server already answering on its port.
    server = make_plan(parse_args(args), env).prefect_server()
    server.log.parent.mkdir(parents=True, exist_ok=True)
    proc: Proc | None = None

    def up() -> bool:
        assert proc is not None
        if proc.popen.poll() is not None:
            raise AssertionError(f"the stack exited: {proc.output()[-4000:]}")
        return "Ctrl-C stops all of it." in proc.output()

    try:
        server.start(timeout=900)
        proc = Proc([sys.executable, "-m", "scripts.stack", *args], env, root / "stack.log")
        wait_until(up, 600, "the stack's banner", every=1)
        prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            yield StockStack(f"http://127.0.0.1:{api_port}", prefect_api,
                             f"http://127.0.0.1:{prefect_port}", workspace, env, proc)
    finally:
        # The stack stops its children itself on SIGTERM (each is in its own process group).
        if proc is not None and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill(signal.SIGKILL)
        server.stop()
        logs = workspace / ".studio" / "logs"
        if logs.is_dir():  # kept for a failing run's post-mortem
            shutil.copytree(logs, ARTIFACTS / "td-stack-logs", dirs_exist_ok=True)


def _artifacts(flow_run_id: Any) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return asyncio.run(read())


def _flow_run(flow_run_id: Any) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)
    return asyncio.run(read())


def _missing_lora(store: ProjectStore, project_id: str, node_id: str) -> None:
    with store.edit(project_id) as project:
        asset = Asset(id=str(uuid.uuid4()), kind="character", name="Alex",
                      lora_path="Library/LoRAs/alex-missing.safetensors")
        character = new_node("character", params={"asset_id": asset.id})
        project.assets.append(asset)
        project.nodes.append(character)
        project.edges.append(Edge(id=new_id(), source=character.id, source_socket="asset",
                                  target=node_id, target_socket="character"))


def test_a_batch_with_a_missing_lora_in_the_middle_renders_the_rest_and_says_what_failed(
        stack: StockStack) -> None:
    store = stack.store
    project = store.create("Project Odyssey", "standard")
    first = add_text_to_image(store, project.id, shot="SHOT_010")
    broken = add_text_to_image(store, project.id, shot="SHOT_020", x=300)
    last = add_text_to_image(store, project.id, shot="SHOT_030", x=600)
    _missing_lora(store, project.id, broken)

    # As a TD types it in the run form: the display name and the shots as files name them.
    run = stack.batch(project="Project Odyssey", scene="SCENE-01",
                      shots=["SHOT-010", "SHOT-020", "SHOT_030"], takes_per_node=2)

    assert run.state is not None and run.state.is_failed(), run.state
    assert "2 of 6 takes did not render" in (run.state.message or "")
    manifest = store.load(project.id)
    statuses = {node_id: [t.status for t in manifest.get_node(node_id).takes]
                for node_id in (first, broken, last)}
    assert statuses == {first: [TakeStatus.completed] * 2, broken: [TakeStatus.failed] * 2,
                        last: [TakeStatus.completed] * 2}
    # A bad LoRA is bad input: no retries.
    assert [t.attempts for t in manifest.get_node(broken).takes] == [1, 1]

    flow_run = _flow_run(run.id)
    assert flow_run.name == "Project Odyssey · SCENE_01 · 6 takes · standard"
    assert {"project:Project_Odyssey", "scene:SCENE_01", "quality:standard"} <= set(flow_run.tags)

    by_key = {a.key: a for a in _artifacts(run.id)}
    summary = by_key["batch-project-odyssey-summary"].data
    assert "**4 done, 2 failed, 0 skipped** of 6 takes" in summary
    assert "SHOT-020 · take01" in summary and "alex-missing.safetensors" in summary
    assert "take-project-odyssey-shot-010" in by_key  # takes keyed by project and shot

    sheet = by_key["batch-project-odyssey-contact-sheet"].data
    assert sheet.startswith(f"{stack.api}/api/projects/Project_Odyssey/files/03_Renders/"
                            "CONTACT_SHEETS/") and "?sig=" in sheet
    rel = sheet.split("/files/", 1)[1].split("?", 1)[0]
    assert (store.project_dir(project.id) / rel).is_file()
    assert f"]({sheet})" in summary  # the summary links it

    # The signed link opens that one file without the API token, and nothing else.
    image = httpx.get(sheet, timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as im:
        assert im.size[0] > 2 * 192  # a grid, not one thumbnail
    signature = sheet.split("?sig=", 1)[1]
    take_file = manifest.get_node(first).takes[0].path
    other = httpx.get(f"{stack.api}/api/projects/Project_Odyssey/files/{take_file}",
                      params={"sig": signature}, timeout=30)
    assert other.status_code == 401
    unsigned = sheet.split("?", 1)[0]
    assert httpx.get(unsigned, timeout=30).status_code == 401
    assert httpx.get(unsigned, params={"sig": "1.00"}, timeout=30).status_code == 401


def test_a_three_by_three_seed_and_cfg_sweep_renders_nine_takes_on_a_labelled_grid(
        stack: StockStack) -> None:
    store = stack.store
    project = store.create("Look Dev", "standard")
    node_id = add_text_to_image(store, project.id, shot="SHOT_040")

    run = stack.batch(project=project.id,
                      sweep={"shot": "SHOT-040", "seeds": [1, 2, 3], "cfg_scales": [2, 3.5, 5]})

    assert run.state is not None and run.state.is_completed(), run.state
    takes = store.load(project.id).get_node(node_id).takes
    assert len(takes) == 9 and {t.status for t in takes} == {TakeStatus.completed}
    assert sorted((t.params["seed"], t.params["cfg_scale"]) for t in takes) == sorted(
        (s, c) for s in (1, 2, 3) for c in (2.0, 3.5, 5.0))
    [url] = [a.data for a in _artifacts(run.id) if a.key == "batch-look-dev-contact-sheet"]
    sheet = store.project_dir(project.id) / url.split("/files/", 1)[1].split("?", 1)[0]
    with Image.open(sheet) as im:
        # 3 columns x 3 rows of 192 px thumbnails (+ labels), a label column and a label row.
        from tasks.contact_sheet import GAP, LABEL_H, MARGIN, THUMB
        assert im.size == (2 * MARGIN + 110 + 3 * THUMB + 2 * GAP,
                           2 * MARGIN + 22 + 3 * (THUMB + LABEL_H) + 2 * GAP)
        # Axis labels are drawn: the top band and the left band are not empty background.
        top_band = im.crop((MARGIN + 110, MARGIN, im.size[0] - MARGIN, MARGIN + 20))
        left_band = im.crop((MARGIN, MARGIN + 22, MARGIN + 100, im.size[1] - MARGIN))
        for band in (top_band, left_band):
            assert any(low != high for low, high in band.getextrema())
        ARTIFACTS.mkdir(exist_ok=True)
        im.save(ARTIFACTS / "sweep-contact-sheet.png")


def test_empty_seeds_give_every_take_its_own_seed_and_image(stack: StockStack) -> None:
    store = stack.store
    project = store.create("Random Seeds", "standard")
    node_id = add_text_to_image(store, project.id, shot="SHOT_050")  # the node's seed is 7

    run = stack.batch(project="Random Seeds", takes_per_node=3)

    assert run.state is not None and run.state.is_completed(), run.state
    takes = store.load(project.id).get_node(node_id).takes
    assert len({t.params["seed"] for t in takes}) == 3
    images = {(store.project_dir(project.id) / t.path).read_bytes() for t in takes}
    assert len(images) == 3


def _metrics(stack: StockStack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = stack.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def test_metrics_count_a_low_tier_take_and_its_render_time(stack: StockStack) -> None:
    assert stack.get("/metrics").status_code == 401  # the token guards it too
    completed = ("studio_takes_total", (("status", "completed"), ("tier", "low")))
    rendered = ("studio_render_seconds_count", (("tier", "low"),))
    before = _metrics(stack)
    assert before[("studio_task_workers_online", (("tier", "standard"),))] == 1
    store = stack.store
    project = store.create("Metrics", "standard")
    node_id = add_text_to_image(store, project.id, shot="SHOT_060", steps=8)

    run = stack.batch(project="Metrics", quality="low", seeds=[5])

    assert run.state is not None and run.state.is_completed(), run.state
    after = _metrics(stack)
    assert after[completed] == before.get(completed, 0) + 1
    assert after[rendered] == before.get(rendered, 0) + 1
    assert after[("studio_queue_depth", (("tier", "low"),))] == 0
    # The low tier (FLUX.1-schnell) renders at most 4 steps and has no CFG: the take says so.
    [take] = store.load(project.id).get_node(node_id).takes
    assert take.params["steps"] == 8 and take.applied["steps"] == 4
    assert take.applied["cfg_scale"] is None
    table = next(a for a in _artifacts(run.id) if a.key == "take-metrics-shot-060-params")
    rows = {r["parameter"]: r["value"] for r in json.loads(table.data)}
    assert rows["steps"].startswith("4 (asked 8") and rows["cfg scale"].startswith("ignored")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Hook.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_failed_batch_fires_the_failure_automations_at_the_webhook(stack: StockStack) -> None:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        env = {**stack.env, "PREFECT_API_URL": stack.prefect_api,
               "STUDIO_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook.server_port}/alerts"}
        created = subprocess.run([sys.executable, "-m", "scripts.create_automations"], cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stdout + created.stderr
        assert "studio: batch failed" in created.stdout
        assert "studio: task worker offline" in created.stdout

        store = stack.store
        project = store.create("Alerts", "standard")
        broken = add_text_to_image(store, project.id, shot="SHOT_070")
        _missing_lora(store, project.id, broken)
        run = stack.batch(project="Alerts", takes_per_node=3)
        assert run.state is not None and run.state.is_failed(), run.state

        def alerts(words: str) -> list[dict[str, Any]]:
            return [a for a in _Hook.received if words in a.get("subject", "")]

        [alert] = wait_until(lambda: alerts("Alerts · all scenes · 3 takes"), 180,
                             "the batch's failure notification at the webhook", every=1)
        assert "batch_takes" in alert["body"] and "alex-missing.safetensors" in alert["body"]
        # Its three failed takes of one tier fire the second automation.
        [tier] = wait_until(lambda: alerts("Takes failing on the standard tier"), 120,
                            "the failing-takes notification", every=1)
        assert "alex-missing.safetensors" in tier["body"]
    finally:
        hook.shutdown()


def test_the_run_form_in_the_prefect_ui_explains_every_parameter(stack: StockStack) -> None:
    # Last in the module: sync Playwright holds an event loop, so asyncio.run is done with first.
    from playwright.sync_api import sync_playwright

    from tests.e2e.stack import CHROMIUM, CHROMIUM_ARGS

    async def deployment_id() -> str:
        async with get_client() as client:
            return str((await client.read_deployment_by_name("batch_takes/local")).id)

    form = f"{stack.prefect_ui}/v2/deployments/deployment/{asyncio.run(deployment_id())}/run"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2200})
            page.set_default_timeout(60_000)
            page.goto(form)
            page.get_by_text("The project's name as the canvas shows it").first.wait_for()
            page.wait_for_timeout(1500)  # let the form settle before the picture
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "prefect-run-form-batch-takes.png"),
                            full_page=True)
            text = page.inner_text("body")
        finally:
            browser.close()
    for words in ("Only these shots, e.g.", "a random seed", "How many takes each selected node",
                  "Look development", "uses the project's own quality"):
        assert words in text, words
    assert 'Property is type "None"' not in text
