"""Character and style LoRAs: loaded with their weight, recorded in the PNG, then unloaded.

Their trigger words and style prompts are composed into the prompt by the domain
(tests/test_studio_graph.py); the runner renders the prompt it is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from runners.flux.contract import BadInput, ModelMissing
from runners.flux.generation import FluxRequest, LoraSpec, generate
from runners.flux.metadata import read_metadata
from tests.fixtures.tiny_model import make_tiny_lora

LORA = "Library/LoRAs/tiny_style.safetensors"


@pytest.fixture(scope="module")
def lora_workspace(tiny_model_dir: Path) -> Path:
    make_tiny_lora(tiny_model_dir / LORA, tiny_model_dir / "Library/AI_Models/flux/FLUX.1-dev")
    return tiny_model_dir


def take(workspace: Path, name: str, loras: list, **kw: object) -> bytes:
    """The take's pixels (its PNG text chunks differ anyway: they record the LoRAs)."""
    kw.setdefault("prompt", "a castle on a hill")
    result = generate(FluxRequest(
        seed=5, steps=2, width=256, height=256, quality="standard",
        workspace=workspace, output_path=f"Projects/Lora/{name}.png", loras=loras, **kw))
    with Image.open(result.output_path) as img:
        return img.tobytes()


def test_a_lora_changes_the_image_by_its_weight_and_is_unloaded_after_the_take(
    lora_workspace: Path,
) -> None:
    base = take(lora_workspace, "base", [])
    styled = take(lora_workspace, "styled", [LoraSpec(path=LORA, weight=1.0)])
    zero = take(lora_workspace, "zero", [{"path": LORA, "weight": 0.0, "kind": "style"}])
    after = take(lora_workspace, "after", [])
    assert styled != base  # the LoRA acts (on the fp8-stored standard tier)
    assert zero == base  # weight 0 is no LoRA at all
    assert after == base  # the cached pipeline is clean again for the next take


def test_the_composed_prompt_is_rendered_as_given_and_the_png_records_the_lora(
    lora_workspace: Path,
) -> None:
    lora = {"path": LORA, "weight": 0.8, "kind": "character"}
    take(lora_workspace, "words", [lora], prompt="zxqalex, a castle on a hill, film noir")
    meta = read_metadata(lora_workspace / "Projects/Lora/words.png")
    assert meta["prompt"] == "zxqalex, a castle on a hill, film noir"
    assert meta["loras"] == [lora]


def test_trigger_words_given_to_the_runner_are_refused_they_belong_in_the_prompt() -> None:
    with pytest.raises(BadInput, match=r"LORAS\[0\] has unknown fields: trigger_words"):
        FluxRequest(prompt="a castle", output_path="x.png",
                    loras=[{"path": LORA, "kind": "character", "trigger_words": ["zxqalex"]}])


def test_a_missing_lora_file_is_a_missing_model_error(lora_workspace: Path) -> None:
    with pytest.raises(ModelMissing, match="LoRA file not found: Library/LoRAs/gone.safetensors"):
        take(lora_workspace, "gone", [{"path": "Library/LoRAs/gone.safetensors", "kind": "style"}])
    assert not (lora_workspace / "Projects/Lora/gone.png").exists()


def test_a_lora_outside_the_workspace_or_not_safetensors_is_bad_input(
    lora_workspace: Path,
) -> None:
    with pytest.raises(BadInput, match="must lie inside STUDIO_WORKSPACE"):
        take(lora_workspace, "escape", [{"path": "/etc/passwd.safetensors", "kind": "style"}])
    (lora_workspace / "Library/LoRAs/pickled.ckpt").write_bytes(b"x")
    with pytest.raises(BadInput, match="must be a .safetensors file"):
        take(lora_workspace, "pickle", [{"path": "Library/LoRAs/pickled.ckpt", "kind": "style"}])


def test_a_file_that_is_not_a_flux_lora_is_refused_and_the_pipeline_stays_clean(
    lora_workspace: Path,
) -> None:
    import torch
    from safetensors.torch import save_file

    bogus = lora_workspace / "Library/LoRAs/bogus.safetensors"
    save_file({"unet.down.lora_A.weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(BadInput, match="does not fit FLUX.1-dev"):
        take(lora_workspace, "bogus", [{"path": "Library/LoRAs/bogus.safetensors",
                                        "kind": "style"}])
    assert take(lora_workspace, "after_bogus", []) == take(lora_workspace, "base2", [])
