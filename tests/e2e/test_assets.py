"""An artist makes a character asset on the canvas (no hand-written project.json), puts it on the
canvas, wires it to a Text-to-Image node and generates with its LoRA: headless Chromium against the
real stack (API, Prefect, a task worker on the tiny FLUX model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.stack import (  # noqa: F401 (the *_fixture functions are fixtures)
    Stack,
    browser_fixture,
    canvas_built_fixture,
    page_fixture,
    screenshot,
    stack_fixture,
)
from tests.e2e.test_canvas import (
    add_node,
    connect,
    open_new_project,
    select,
    small_and_fast,
    wait_completed,
)
from tests.fixtures.tiny_model import make_tiny_lora

LORA = "Library/LoRAs/alex.safetensors"


@pytest.fixture(scope="module")
def lora(stack: Stack, tiny_model_dir: Path) -> str:
    """A real (tiny, random) LoRA for the standard tier's model, where artists put LoRAs."""
    make_tiny_lora(stack.workspace / LORA, tiny_model_dir / "Library/AI_Models/flux/FLUX.1-dev")
    return LORA


def test_a_character_made_in_the_form_is_wired_to_a_node_and_generates(
        lora: str, page: Page, stack: Stack) -> None:
    project_id = open_new_project(page, "Assets")
    palette = page.get_by_test_id("palette")
    expect(palette).to_contain_text("No character assets")

    # A style's form asks for its prompt, its LoRA is optional; Escape closes it unsaved.
    page.get_by_test_id("new-asset-style").click()
    form = page.get_by_test_id("asset-form")
    expect(form.get_by_test_id("asset-style-prompt-input")).to_be_visible()
    expect(form.get_by_test_id("asset-lora-select")).to_contain_text("None")
    screenshot(page, "assets-style-form")
    page.keyboard.press("Escape")
    expect(form).to_have_count(0)

    # The form: the server's refusal is shown in it (a character needs a LoRA).
    page.get_by_test_id("new-asset-character").click()
    expect(form).to_be_visible()
    form.get_by_test_id("asset-name-input").fill("Alex")
    form.get_by_test_id("asset-form-save").click()
    expect(form.get_by_test_id("asset-form-error")).to_contain_text(
        "a character asset needs a lora_path")
    screenshot(page, "assets-form-refused")

    # The picker offers the workspace's LoRA files; the asset is saved and listed.
    form.get_by_test_id("asset-lora-select").select_option(lora)
    expect(form.get_by_test_id("asset-form-error")).to_have_count(0)  # gone once edited
    form.get_by_test_id("asset-lora-weight-input").fill("0.8")
    form.get_by_test_id("asset-trigger-words-input").fill("alexchar, red jacket")
    screenshot(page, "assets-form")
    form.get_by_test_id("asset-form-save").click()
    expect(form).to_have_count(0)
    expect(page.get_by_test_id("add-node-character")).to_have_text("Character: Alex")
    [asset] = stack.project(project_id)["assets"]
    assert (asset["kind"], asset["name"], asset["lora_path"], asset["lora_weight"],
            asset["trigger_words"]) == ("character", "Alex", lora, 0.8, ["alexchar", "red jacket"])

    character = add_node(page, "character")
    expect(character.get_by_test_id("node-asset")).to_have_value(asset["id"])
    node = add_node(page, "text_to_image")

    # Dimensions: each preset with its pixel size; custom starts from the preset's size.
    preset = page.get_by_test_id("preset-select")
    expect(preset.locator('option[value="16:9"]')).to_have_text("16:9 — 1344×768")
    preset.select_option("16:9")
    screenshot(page.get_by_test_id("inspector"), "assets-dimensions")
    preset.select_option("custom")
    expect(page.get_by_test_id("width-input")).to_have_value("1344")
    expect(page.get_by_test_id("height-input")).to_have_value("768")

    small_and_fast(page, node)
    node.get_by_test_id("node-prompt").fill("a portrait in the rain")
    connect(page, character, "asset", node, "character")
    expect(page.get_by_test_id("edge")).to_have_count(1)

    node.get_by_test_id("node-generate").click()
    wait_completed(node, takes=1)
    [take] = stack.project(project_id)["nodes"][1]["takes"]
    assert take["params"]["prompt"] == "alexchar, red jacket, a portrait in the rain"
    assert [(lo["path"], lo["weight"]) for lo in take["params"]["loras"]] == [(lora, 0.8)]

    select(node)
    expect(page.get_by_test_id("crosslink-character")).to_have_text("Character: Alex")
    page.get_by_test_id("crosslink-character").scroll_into_view_if_needed()
    screenshot(page, "assets-generated")
