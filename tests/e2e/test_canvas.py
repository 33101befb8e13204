"""The canvas in headless Chromium against the real stack (API, Prefect, a task worker on the tiny
FLUX model): what an artist does with a Text-to-Image node, end to end."""

from __future__ import annotations

import re
import uuid

import httpx
from playwright.sync_api import Locator, Page, expect

from studio.manifest import Asset
from studio.store import ProjectStore
from studio.workspace import Workspace
from tests.e2e.stack import (  # noqa: F401 (the *_fixture functions are fixtures)
    Stack,
    browser_fixture,
    canvas_built_fixture,
    page_fixture,
    screenshot,
    stack_fixture,
)
from tests.stack_helpers import wait_until

GENERATION_TIMEOUT_MS = 90_000
# Two cores shared with the worker and the API: give the page time.
expect.set_options(timeout=15_000)

# Every text the progress bars show, recorded as it changes (a take of the tiny model can start
# and finish between two polls of an assertion).
RECORD_PROGRESS = """
window.__progress = [];
window.__previews = 0;
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-testid="node-progress-text"]')) {
    const text = el.textContent.trim();
    if (window.__progress.at(-1) !== text) window.__progress.push(text);
  }
  if (document.querySelector('[data-testid="node-preview"]')) window.__previews += 1;
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


# --- helpers -------------------------------------------------------------------------------


def open_new_project(page: Page, label: str) -> str:
    page.goto("/")
    page.get_by_test_id("project-name-input").fill(f"{label} {uuid.uuid4().hex[:6]}")
    page.get_by_test_id("project-create").click()
    expect(page.get_by_test_id("project-bar")).to_be_visible()
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-status", "open")
    match = re.search(r"#/projects/(.+)$", page.url)
    assert match, page.url
    return match.group(1)


def add_node(page: Page, node_type: str) -> Locator:
    """Adds a node from the palette; returns its frame (the node is selected)."""
    nodes = page.locator(f'[data-testid="node"][data-node-type="{node_type}"]')
    before = nodes.count()
    page.get_by_test_id(f"add-node-{node_type}").click()
    try:
        # Generous: on a loaded 2-core machine the API's answer has taken over 15 s.
        expect(nodes).to_have_count(before + 1, timeout=60_000)
    except AssertionError as exc:  # say what the canvas told the artist
        toasts = page.get_by_test_id("toast").all_inner_texts()
        raise AssertionError(f"no {node_type} node added; toasts: {toasts}") from exc
    expect(page.get_by_test_id("inspector-title")).to_be_visible()
    new_id = node_id(nodes.nth(before))
    return page.locator(f'[data-testid="node"][data-node-id="{new_id}"]')


def node_id(node: Locator) -> str:
    value = node.get_attribute("data-node-id")
    assert value
    return value


def select(node: Locator) -> None:
    node.locator("header").click()
    expect(node.page.get_by_test_id("inspector-title")).to_be_visible()


def small_and_fast(page: Page, node: Locator) -> None:
    """Custom 256×256, 2 steps, a fixed seed: a take of the tiny model in about a second."""
    select(node)
    page.get_by_test_id("preset-select").select_option("custom")
    for field, value in (("width-input", "256"), ("height-input", "256"), ("steps-input", "2"),
                         ("seed-input", "7")):
        page.get_by_test_id(field).fill(value)
        page.get_by_test_id(field).press("Tab")
    expect(page.get_by_test_id("steps-input")).to_have_value("2")


def drag(page: Page, source: Locator, target: Locator) -> None:
    """A pointer drag from the middle of one element to the middle of another."""
    a, b = source.bounding_box(), target.bounding_box()
    assert a and b
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=12)
    page.mouse.up()


def connect(page: Page, source: Locator, output: str, target: Locator, input: str) -> None:
    drag(page, source.get_by_test_id(f"socket-output-{output}"),
         target.get_by_test_id(f"socket-input-{input}"))


def wait_completed(node: Locator, takes: int) -> None:
    expect(node).to_have_attribute("data-state", "completed", timeout=GENERATION_TIMEOUT_MS)
    expect(node.get_by_test_id("node-thumbnail")).to_be_visible()
    gallery = node.page.locator('[data-testid="take"][data-status="completed"]')
    expect(gallery).to_have_count(takes, timeout=GENERATION_TIMEOUT_MS)


# --- the tests -----------------------------------------------------------------------------


def test_generate_takes_and_choose_the_active_one(page: Page, stack: Stack) -> None:
    page.add_init_script(RECORD_PROGRESS)
    project_id = open_new_project(page, "Takes")
    node = add_node(page, "text_to_image")
    small_and_fast(page, node)
    node.get_by_test_id("node-prompt").fill("a red fox in the snow, cinematic")

    node.get_by_test_id("node-generate").click()
    expect(node.get_by_test_id("node-progress")).to_be_visible()
    screenshot(page, "canvas-generating")
    wait_completed(node, takes=1)
    progress = page.evaluate("window.__progress")
    from_worker = [t for t in progress if not re.search(r"Queued|Starting", t)]
    assert from_worker, f"no progress from the worker reached the node: {progress}"
    assert all(re.match(r"^\d+% ", t) for t in progress), progress
    assert page.evaluate("window.__previews") > 0, "no live preview was shown while denoising"
    assert page.locator('[data-testid="take"][data-active="true"]').count() == 1

    saved = stack.project(project_id)["nodes"][0]
    assert saved["params"]["prompt"] == "a red fox in the snow, cinematic"
    assert (saved["params"]["width"], saved["params"]["steps"]) == (256, 2)
    screenshot(page, "canvas-completed")
    screenshot(page.get_by_test_id("inspector"), "inspector-one-take")

    node.get_by_test_id("node-generate").click()
    wait_completed(node, takes=2)
    second = page.locator('[data-testid="take"][data-take-number="2"]')
    expect(second).to_have_attribute("data-active", "true")
    expect(page.get_by_test_id("active-take-name")).to_contain_text("take02")

    first = page.locator('[data-testid="take"][data-take-number="1"]')
    first.click()
    expect(first).to_have_attribute("data-active", "true")
    expect(second).to_have_attribute("data-active", "false")
    expect(page.get_by_test_id("active-take-name")).to_contain_text("take01")
    expect(node.get_by_test_id("node-thumbnail")).to_have_attribute("src", re.compile("take01"))
    expect(page.get_by_test_id("output-file-link")).to_have_attribute("href", re.compile("take01"))
    saved = stack.project(project_id)["nodes"][0]
    assert saved["active_take"] == saved["takes"][0]["id"]
    page.get_by_test_id("output-file-link").scroll_into_view_if_needed()
    screenshot(page.get_by_test_id("inspector"), "inspector-two-takes")


def test_a_generate_fetches_the_project_at_most_once(page: Page, stack: Stack) -> None:
    """The take's messages (queued, generating, progress, success, completed) are applied to the
    canvas in place; only the new take's number and file are fetched (one node)."""
    project_id = open_new_project(page, "Fetches")
    node = add_node(page, "text_to_image")
    small_and_fast(page, node)
    node.get_by_test_id("node-prompt").fill("a paper boat on a pond")
    wait_until(lambda: stack.project(project_id)["nodes"][0]["params"]["prompt"]
               == "a paper boat on a pond", 15, "the prompt to be saved")
    project_path = f"/api/projects/{project_id}"
    fetches: list[str] = []
    page.on("request", lambda r: fetches.append(r.url) if r.method == "GET" and (
        r.url.split("?")[0].endswith(project_path) or f"{project_path}/nodes/" in r.url) else None)

    node.get_by_test_id("node-generate").click()
    wait_completed(node, takes=1)
    page.wait_for_timeout(1_000)  # time for a fetch the last messages would start

    assert len(fetches) <= 1, f"{len(fetches)} fetches of the project for one Generate: {fetches}"
    take = stack.project(project_id)["nodes"][0]["takes"][0]
    expect(node.get_by_test_id("node-thumbnail")).to_have_attribute(
        "src", re.compile(re.escape(take["path"].split("/")[-1])))
    expect(page.locator('[data-testid="take"][data-take-number="1"]')).to_have_attribute(
        "data-active", "true")


def test_image_output_cannot_feed_a_string_input(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Refusal")
    first = add_node(page, "text_to_image")
    second = add_node(page, "text_to_image")

    connect(page, first, "image", second, "prompt")
    toast = page.get_by_test_id("toast")
    expect(toast).to_contain_text("Image output cannot feed the String input")
    expect(page.get_by_test_id("edge")).to_have_count(0)
    assert stack.project(project_id)["edges"] == []
    screenshot(page, "canvas-refused")


def test_the_servers_refusal_is_shown(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Server refusal")
    text = add_node(page, "string")
    target = add_node(page, "text_to_image")
    # Behind the canvas's back: the node it still shows is gone on the server.
    target_id = node_id(target)  # read now: the reload after the refusal removes the node
    url = f"{stack.base_url}/api/projects/{project_id}/nodes/{target_id}"
    httpx.delete(url).raise_for_status()

    connect(page, text, "value", target, "prompt")
    expect(page.get_by_test_id("toast")).to_contain_text(target_id)
    expect(target).to_have_count(0)  # the canvas reloaded the project


def test_a_changed_upstream_value_marks_the_node_out_of_sync(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Out of sync")
    text = add_node(page, "string")
    text.get_by_test_id("node-value").fill("a lighthouse at dusk")
    node = add_node(page, "text_to_image")
    small_and_fast(page, node)
    connect(page, text, "value", node, "prompt")
    expect(page.get_by_test_id("edge")).to_have_count(1)
    expect(node.get_by_test_id("node-prompt-wired")).to_be_visible()
    edge = stack.project(project_id)["edges"][0]
    assert (edge["source_socket"], edge["target_socket"]) == ("value", "prompt")

    node.get_by_test_id("node-generate").click()
    wait_completed(node, takes=1)
    expect(node).to_have_css("border-top-color", "rgb(34, 197, 94)")  # green

    text.get_by_test_id("node-value").fill("a lighthouse at dawn")
    expect(node).to_have_attribute("data-state", "out_of_sync")
    expect(node.get_by_test_id("node-out-of-sync")).to_be_visible()
    expect(node).to_have_css("border-top-color", "rgb(245, 158, 11)")  # amber
    screenshot(page, "canvas-out-of-sync")


def test_cross_links_select_the_connected_asset(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Cross-links")
    with ProjectStore(Workspace(stack.workspace)).edit(project_id) as project:
        project.assets.append(
            Asset(id=str(uuid.uuid4()), kind="style", name="Noir", style_prompt="film noir")
        )
    page.reload()
    expect(page.get_by_test_id("add-node-style")).to_contain_text("Noir")
    style = add_node(page, "style")
    node = add_node(page, "text_to_image")
    connect(page, style, "asset", node, "style")
    expect(page.get_by_test_id("edge")).to_have_count(1)

    select(node)
    screenshot(page.get_by_test_id("inspector"), "inspector-cross-links")
    page.get_by_test_id("crosslink-style").click()
    expect(page.get_by_test_id("inspector-title")).to_have_text("Style")
    expect(style).to_have_class(re.compile(r"\bselected\b"))


def test_a_failed_take_shows_its_error(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Failure")
    with ProjectStore(Workspace(stack.workspace)).edit(project_id) as project:
        project.assets.append(Asset(id=str(uuid.uuid4()), kind="character", name="Alex",
                                    lora_path="Library/LoRAs/alex-missing.safetensors"))
    page.reload()
    character = add_node(page, "character")
    node = add_node(page, "text_to_image")
    small_and_fast(page, node)
    node.get_by_test_id("node-prompt").fill("a portrait of Alex")
    connect(page, character, "asset", node, "character")
    expect(page.get_by_test_id("edge")).to_have_count(1)

    node.get_by_test_id("node-generate").click()
    expect(node).to_have_attribute("data-state", "error", timeout=GENERATION_TIMEOUT_MS)
    expect(node).to_have_css("border-top-color", "rgb(239, 68, 68)")  # red
    error = node.get_by_test_id("node-error")
    expect(error).to_have_attribute("title", re.compile("alex-missing.safetensors"))
    error.click()
    expect(node.get_by_test_id("node-error-message")).to_contain_text("alex-missing.safetensors")
    expect(page.locator('[data-testid="take"][data-status="failed"]')).to_have_count(1)
    screenshot(page, "canvas-error")


def test_a_quality_fallback_is_noticed(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Fallback")
    page.get_by_test_id("quality-select").select_option("high")
    wait_until(lambda: stack.project(project_id)["quality"] == "high", 10, "the saved quality")
    # The default policy waits 30 s for an offline tier before falling back; not this project.
    httpx.patch(f"{stack.base_url}/api/projects/{project_id}",
                json={"fallback_grace_seconds": 0}).raise_for_status()
    node = add_node(page, "text_to_image")
    small_and_fast(page, node)
    node.get_by_test_id("node-prompt").fill("a castle on a hill")

    node.get_by_test_id("node-generate").click()
    # Only a standard worker is online: the take is rendered there, and the bar says so.
    expect(page.get_by_test_id("notice")).to_contain_text("standard", timeout=GENERATION_TIMEOUT_MS)
    wait_completed(node, takes=1)
    take = stack.project(project_id)["nodes"][0]["takes"][0]
    assert (take["quality_requested"], take["quality_used"]) == ("high", "standard")


def test_the_bar_shows_each_tier_and_a_queued_or_running_take_can_be_cancelled(
        page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Cancel")
    expect(page.get_by_test_id("tier-state-standard")).to_have_attribute("data-state", "online")
    expect(page.get_by_test_id("tier-state-high")).to_have_attribute("data-state", "offline")
    busy = add_node(page, "text_to_image")
    small_and_fast(page, busy)
    # Still rendering when its Cancel is clicked (256x256 at 60 steps ended in about a second
    # on an idle machine, before the click); it is cancelled, so its size costs no time.
    for field, value in (("width-input", "1024"), ("height-input", "1024"), ("steps-input", "100")):
        page.get_by_test_id(field).fill(value)
        page.get_by_test_id(field).press("Tab")
    expect(page.get_by_test_id("steps-input")).to_have_value("100")
    busy.get_by_test_id("node-prompt").fill("keeps the worker busy")
    waiting = add_node(page, "text_to_image")
    small_and_fast(page, waiting)
    waiting.get_by_test_id("node-prompt").fill("waits its turn")

    busy.get_by_test_id("node-generate").click()
    expect(busy).to_have_attribute("data-state", "generating", timeout=GENERATION_TIMEOUT_MS)
    waiting.get_by_test_id("node-generate").click()
    expect(waiting.get_by_test_id("node-queue")).to_contain_text("Queued #1 on standard")
    screenshot(page, "canvas-queued")

    waiting.get_by_test_id("node-generate-cancel").click()
    expect(waiting.get_by_test_id("node-queue")).to_have_count(0)
    expect(waiting.get_by_test_id("node-generate")).to_be_enabled()
    busy.get_by_test_id("node-generate-cancel").click()
    expect(busy.get_by_test_id("node-generate")).to_be_enabled(timeout=GENERATION_TIMEOUT_MS)
    nodes = stack.project(project_id)["nodes"]
    wait_until(lambda: [t["status"] for n in stack.project(project_id)["nodes"]
                        for t in n["takes"]] == ["cancelled", "cancelled"], 30,
               "both takes to be recorded cancelled")
    assert all(not (stack.workspace / "Projects" / project_id / t["path"]).exists()
               for n in nodes for t in n["takes"])


def test_keyboard_and_layout(page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Layout")
    text = add_node(page, "string")
    node = add_node(page, "text_to_image")

    # Nothing overlaps at 1280×800, and every node is inside the canvas.
    boxes = {name: page.get_by_test_id(name).bounding_box()
             for name in ("project-bar", "palette", "canvas", "inspector")}
    for name, box in boxes.items():
        assert box and box["x"] >= 0 and box["y"] >= 0, name
        assert box["x"] + box["width"] <= 1280 + 0.5 and box["y"] + box["height"] <= 800 + 0.5, name
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not _overlap(boxes[a], boxes[b]), f"{a} overlaps {b}"
    canvas = boxes["canvas"]
    assert canvas
    assert not _overlap(text.bounding_box(), node.bounding_box()), "two nodes overlap"
    wait_until(lambda: all(_inside(n.bounding_box(), canvas) for n in (text, node)), 5,
               "the canvas to show every node")
    screenshot(page, "canvas-layout")

    # Dragging a node saves its position.
    before = stack.project(project_id)["nodes"][0]["position"]
    header = text.locator("header").bounding_box()
    assert header
    page.mouse.move(header["x"] + 20, header["y"] + 10)
    page.mouse.down()
    page.mouse.move(header["x"] + 20, header["y"] + 130, steps=8)
    page.mouse.up()
    wait_until(lambda: stack.project(project_id)["nodes"][0]["position"]["y"] > before["y"] + 50,
               10, "the dragged position to be saved")

    # The canvas pans and zooms.
    viewport = page.locator(".svelte-flow__viewport")
    transform = viewport.get_attribute("style")
    page.mouse.move(canvas["x"] + 40, canvas["y"] + canvas["height"] - 200)
    page.mouse.wheel(0, -400)
    expect(viewport).not_to_have_attribute("style", transform or "")
    transform = viewport.get_attribute("style")
    page.mouse.down()
    page.mouse.move(canvas["x"] + 140, canvas["y"] + canvas["height"] - 150, steps=5)
    page.mouse.up()
    expect(viewport).not_to_have_attribute("style", transform or "")
    page.locator(".svelte-flow__controls-fitview").click()

    # Delete removes the selection, on the canvas and in project.json.
    select(node)
    page.keyboard.press("Delete")
    expect(page.locator('[data-testid="node"]')).to_have_count(1)
    wait_until(lambda: len(stack.project(project_id)["nodes"]) == 1, 10, "the node to be deleted")
    expect(page.get_by_test_id("inspector")).to_contain_text("Select a node")


def test_the_connection_comes_back_after_the_server_restarts(page: Page, stack: Stack) -> None:
    open_new_project(page, "Reconnect")
    status = page.get_by_test_id("connection-status")
    stack.stop_api()
    expect(status).not_to_have_attribute("data-status", "open")
    stack.start_api()
    expect(status).to_have_attribute("data-status", "open", timeout=30_000)


# --- geometry ------------------------------------------------------------------------------


def _overlap(a: dict | None, b: dict | None) -> bool:
    assert a and b
    return (a["x"] < b["x"] + b["width"] - 0.5 and b["x"] < a["x"] + a["width"] - 0.5
            and a["y"] < b["y"] + b["height"] - 0.5 and b["y"] < a["y"] + a["height"] - 0.5)


def _inside(inner: dict | None, outer: dict) -> bool:
    assert inner
    return (inner["x"] >= outer["x"] and inner["y"] >= outer["y"]
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"])
