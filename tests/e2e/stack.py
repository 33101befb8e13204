"""Fixtures for the canvas's end-to-end tests: the real stack and a real browser.

The stack is the session's Prefect server, a warm `standard` task worker on the tiny FLUX model,
and the API under uvicorn serving the built canvas; the browser is Debian's Chromium driven by
Playwright. A test module imports the `*_fixture` functions; pytest knows them by their `name`.
Both live for one module: a task worker left online would change what later tests of the session
see, and sync Playwright holds an event loop that would stop them from using asyncio.run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, sync_playwright

from scripts.local_prefect import LocalPrefectServer, free_port
from studio.tiers import Quality
from tests.stack_helpers import REPO, Proc, start_tier_worker, studio_env, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# What the browser itself logs for a refused request or a socket to a stopped server: the tests
# provoke both on purpose and check what the page shows instead.
NETWORK_NOISE = re.compile(r"Failed to load resource|WebSocket connection to .* failed")
ARTIFACTS = REPO / "test-artifacts"


@dataclass
class Stack:
    base_url: str
    workspace: Path
    api_cmd: list[str]
    env: dict[str, str]
    logs: Path
    api: Proc | None = None

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", timeout=10)

    def project(self, project_id: str) -> dict:
        response = self.get(f"/api/projects/{project_id}")
        response.raise_for_status()
        return response.json()

    def stop_api(self) -> None:
        if self.api is not None:
            self.api.kill()

    def start_api(self) -> None:
        """(Re)starts the API on the same port and waits until it answers."""
        self.launch_api()
        self.wait_for_api()

    def launch_api(self) -> None:
        self.api = Proc(self.api_cmd, self.env, self.logs / "api.log")

    def wait_for_api(self) -> None:
        api = self.api
        assert api is not None

        def healthy() -> bool:
            if api.popen.poll() is not None:
                raise AssertionError(f"the API exited: {api.output()[-3000:]}")
            try:
                return self.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the API to answer /healthz")


@pytest.fixture(scope="session", name="canvas_built")
def canvas_built_fixture() -> None:
    """The canvas as the API serves it: built from the current sources (a no-op when fresh)."""
    done = subprocess.run(
        ["bash", "scripts/setup_web.sh"], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/setup_web.sh failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module", name="stack")
def stack_fixture(
    canvas_built: None,
    prefect_server: LocalPrefectServer,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    workspace = root / "workspace"
    workspace.mkdir()
    env = studio_env(workspace, tiny_model_dir / "Library" / "AI_Models")
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    stack = Stack(f"http://127.0.0.1:{port}", workspace, cmd, env, root)
    stack.launch_api()  # starts while the worker loads
    try:
        worker = start_tier_worker(Quality.standard, env, root / "worker.log")
    except BaseException:
        stack.stop_api()
        raise
    try:
        stack.wait_for_api()
        yield stack
    finally:
        stack.stop_api()
        worker.kill()


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `bash scripts/setup_web.sh` installs it (as root)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="page")
def page_fixture(stack: Stack, browser: Browser) -> Iterator[Page]:
    # The stack first: starting it uses asyncio.run, which cannot run beside sync Playwright.
    """A fresh 1280×800 tab on the studio; fails the test on any error the page logs."""
    context = browser.new_context(viewport=VIEWPORT, base_url=stack.base_url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

    def on_console(message: ConsoleMessage) -> None:
        # A failed request is logged too; the tests provoke refusals on purpose and check them.
        if message.type == "error" and not NETWORK_NOISE.search(message.text):
            errors.append(f"console error: {message.text}")

    page.on("console", on_console)
    yield page
    context.close()
    assert not errors, "\n".join(errors)


def screenshot(target: Page | Locator, name: str) -> Path:
    """Saves a screenshot of a page or an element under test-artifacts/ (not committed)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path))
    return path
