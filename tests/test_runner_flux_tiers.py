"""Quality tiers -> diffusers settings, and the node's CFG scale -> FLUX guidance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runners.flux.contract import BadInput
from runners.flux.generation import FluxRequest, generate, preload
from runners.flux.guidance import guidance_kwargs, uses_true_cfg
from runners.flux.metadata import read_metadata
from runners.flux.tiers import TIERS, get_tier


@pytest.mark.parametrize(
    ("quality", "cfg", "negative", "expected"),
    [
        # dev is guidance-distilled: CFG scale is its guidance_scale, one pass per step.
        ("standard", 3.5, "", {"guidance_scale": 3.5, "true_cfg_scale": 1.0}),
        ("high", 7.5, "  ", {"guidance_scale": 7.5, "true_cfg_scale": 1.0}),
        # A negative prompt needs true CFG (2 passes); distilled guidance goes neutral.
        ("high", 4.0, "blurry", {"guidance_scale": 1.0, "true_cfg_scale": 4.0}),
        # schnell has no guidance input at all.
        ("low", 3.5, "", {"guidance_scale": 0.0, "true_cfg_scale": 1.0}),
        ("low", 2.0, "blurry", {"guidance_scale": 0.0, "true_cfg_scale": 2.0}),
    ],
)
def test_cfg_scale_maps_onto_flux_guidance(
    quality: str, cfg: float, negative: str, expected: dict
) -> None:
    kwargs = guidance_kwargs(get_tier(quality), cfg, negative)
    assert kwargs == expected
    assert uses_true_cfg(kwargs) == bool(negative.strip())


@pytest.mark.parametrize("quality", ["low", "standard", "high"])
def test_a_negative_prompt_is_never_silently_ignored(quality: str) -> None:
    with pytest.raises(BadInput, match="negative prompt needs CFG_SCALE > 1"):
        guidance_kwargs(get_tier(quality), 1.0, "blurry")


def test_the_tier_table_follows_the_spec_and_the_studio_tiers() -> None:
    from studio.tiers import TIERS as STUDIO_TIERS

    low, standard, high = TIERS["low"], TIERS["standard"], TIERS["high"]
    assert (low.variant, low.storage_dtype, low.offload) == (
        "FLUX.1-schnell", "float8_e4m3fn", "group")
    assert (low.default_steps, low.max_sequence_length, low.guidance_embeds) == (4, 256, False)
    assert (standard.variant, standard.storage_dtype) == ("FLUX.1-dev", "float8_e4m3fn")
    assert (high.variant, high.storage_dtype, high.fp8_components) == ("FLUX.1-dev", None, ())
    assert [(t.pipeline_id, t.image) for t in (low, standard, high)] == [
        ("flux-schnell-fp8", "gms-flux:1.0-low-vram"), ("flux-dev-fp8", "gms-flux:1.0-standard"),
        ("flux-dev-bf16", "gms-flux:1.0-high-fidelity")]
    for quality, tier in TIERS.items():  # one table: the studio's rows read the runner's
        assert STUDIO_TIERS[quality].runner is tier
        assert STUDIO_TIERS[quality].pipeline_id == tier.pipeline_id


@pytest.mark.parametrize(
    ("quality", "variant", "fp8"),
    [("low", "FLUX.1-schnell", True), ("standard", "FLUX.1-dev", True),
     ("high", "FLUX.1-dev", False)],
)
def test_each_tier_loads_its_variant_with_its_dtypes_and_offload_decision_on_a_cpu(
    tiny_model_dir: Path, quality: str, variant: str, fp8: bool
) -> None:
    settings = preload(quality, workspace=tiny_model_dir)
    assert settings["variant"] == variant and settings["device"] == "cpu"
    dtypes = settings["dtypes"]
    for component in ("transformer", "text_encoder_2"):
        assert ("float8_e4m3fn" in dtypes[component]) is fp8, dtypes
        assert "bfloat16" in dtypes[component]  # norms (and all of bf16 tiers) stay bf16
    assert dtypes["text_encoder"] == ["bfloat16"]
    assert dtypes["vae"] == ["float32"]  # bf16 convolutions are ~50x slower on a CPU
    if quality == "low":
        assert settings["offload"].startswith("skipped")  # offload needs CUDA
    else:
        assert settings["offload"] == "none"
    # The CUDA-only speed settings stay off on a CPU.
    assert settings["compile"] is False and settings["fused_qkv"] is False


def test_the_low_tier_uses_four_steps_ignores_cfg_and_says_so(tiny_model_dir: Path) -> None:
    result = generate(FluxRequest(
        prompt="a red kite", seed=1, steps=30, cfg_scale=3.5, quality="low", width=256, height=256,
        workspace=tiny_model_dir, output_path="Projects/Tiers/low.png"))
    meta = read_metadata(result.output_path)
    assert (meta["steps"], meta["guidance_scale"], meta["max_sequence_length"]) == (4, 0.0, 256)
    assert meta["variant"] == "FLUX.1-schnell" and meta["pipeline_id"] == "flux-schnell-fp8"
    assert any("at most 4 steps" in n for n in result.notes)
    assert any("no guidance input" in n for n in result.notes)


def test_fp8_storage_renders_close_to_bf16_from_the_same_dev_weights(tiny_model_dir: Path) -> None:
    def render(quality: str) -> np.ndarray:
        result = generate(FluxRequest(
            prompt="a red kite", seed=2, steps=2, quality=quality, width=256, height=256,
            workspace=tiny_model_dir, output_path=f"Projects/Tiers/{quality}.png"))
        with Image.open(result.output_path) as img:
            return np.asarray(img, dtype=np.float64)

    fp8, bf16 = render("standard"), render("high")
    difference = np.abs(fp8 - bf16).mean()
    assert 0 < difference < 5, difference  # fp8 weights: a small, visible-in-numbers change
