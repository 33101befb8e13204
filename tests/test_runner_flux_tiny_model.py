"""scripts/make_tiny_model.py: a tiny FLUX pipeline, offline, deterministic, in diffusers format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.make_tiny_model import main

FLUX = Path("Library") / "AI_Models" / "flux"


def test_the_workspace_fixture_holds_both_variants_in_diffusers_format(
    tiny_model_dir: Path,
) -> None:
    for variant, guidance in (("FLUX.1-dev", True), ("FLUX.1-schnell", False)):
        folder = tiny_model_dir / FLUX / variant
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"] == "FluxPipeline"
        config = json.loads((folder / "transformer" / "config.json").read_text())
        assert config["guidance_embeds"] is guidance
        vae = json.loads((folder / "vae" / "config.json").read_text())
        assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 16  # real x8
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 2_000_000


def test_the_cli_is_deterministic_and_says_it_is_not_a_quality_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "a"), "--variant", "FLUX.1-schnell"]) == 0
    assert "NOT a quality model" in capsys.readouterr().out
    assert main([str(tmp_path / "b"), "--variant", "FLUX.1-schnell", "--exact"]) == 0
    weights = "transformer/diffusion_pytorch_model.safetensors"
    first = tmp_path / "a" / FLUX / "FLUX.1-schnell" / weights
    assert first.read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert not (tmp_path / "a" / FLUX / "FLUX.1-dev").exists()
    assert "NOT a quality model" in (tmp_path / "b" / "README.md").read_text()
