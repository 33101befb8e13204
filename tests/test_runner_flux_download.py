"""scripts/download_models.py: clear failures without a token or network; the real code path
(huggingface_hub snapshot_download, then placing the files) run offline on a planted hub cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "download_models.py"
SHA = "0123456789abcdef0123456789abcdef01234567"


def run(tmp_path: Path, *args: str, **env_values: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k not in ("STUDIO_WORKSPACE", "HUGGING_FACE_HUB_TOKEN")}
    # A private HF_HOME: no token file of this machine's user is picked up.
    env.update(HF_HOME=str(tmp_path / "hf_home"), STUDIO_WORKSPACE=str(tmp_path / "ws"))
    env.update(env_values)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_dev_without_a_token_fails_at_once_and_says_what_to_do(tmp_path: Path) -> None:
    proc = run(tmp_path, "--variant", "FLUX.1-dev")
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("ERROR: FLUX.1-dev is gated")
    assert "HF_TOKEN" in message and "huggingface.co/black-forest-labs/FLUX.1-dev" in message
    assert not (tmp_path / "ws" / "Library" / "AI_Models" / "flux" / "FLUX.1-dev").exists()


def test_offline_with_nothing_cached_fails_and_says_what_to_do(tmp_path: Path) -> None:
    proc = run(tmp_path, "--variant", "FLUX.1-schnell", "--cache-dir", str(tmp_path / "empty"),
               HF_HUB_OFFLINE="1")
    assert proc.returncode == 3
    assert "unset HF_HUB_OFFLINE" in proc.stderr.strip().splitlines()[-1]


@pytest.fixture()
def planted_cache(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A hub cache holding the tiny schnell as black-forest-labs/FLUX.1-schnell, plus a stray
    single-file checkpoint at the repo root that must not be placed."""
    repo = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(tiny_model_dir / "Library/AI_Models/flux/FLUX.1-schnell", snapshot)
    (snapshot / "flux1-schnell.safetensors").write_bytes(b"23.8 GB in real life")
    return tmp_path / "hub"


def test_a_planted_hub_cache_is_placed_into_the_workspace_offline(
    tmp_path: Path, planted_cache: Path
) -> None:
    proc = run(tmp_path, "--variant", "FLUX.1-schnell", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(planted_cache))
    assert proc.returncode == 0, proc.stderr
    target = tmp_path / "ws" / "Library" / "AI_Models" / "flux" / "FLUX.1-schnell"
    assert (target / "model_index.json").is_file()
    for component in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                      "transformer", "vae"):
        assert any((target / component).iterdir()), component
    assert not (target / "flux1-schnell.safetensors").exists()  # the single file is not wanted
    source = planted_cache / "models--black-forest-labs--FLUX.1-schnell" / "snapshots" / SHA
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (target / weights).read_bytes() == (source / weights).read_bytes()
    assert (target / weights).stat().st_ino == (source / weights).stat().st_ino  # hard link

    again = run(tmp_path, "--variant", "FLUX.1-schnell", HF_HUB_OFFLINE="1",
                HF_HUB_CACHE=str(planted_cache))
    assert again.returncode == 0 and "already in place" in again.stdout


def test_the_placed_model_renders(tmp_path: Path, planted_cache: Path) -> None:
    from runners.flux.generation import FluxRequest, generate

    assert run(tmp_path, "--variant", "FLUX.1-schnell", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(planted_cache)).returncode == 0
    result = generate(FluxRequest(prompt="a boat", seed=1, steps=1, quality="low", width=256,
                                  height=256, workspace=tmp_path / "ws", output_path="take.png",
                                  preview_every=0))
    assert result.output_path.is_file() and result.variant == "FLUX.1-schnell"


def test_a_dry_run_downloads_nothing(tmp_path: Path, planted_cache: Path) -> None:
    proc = run(tmp_path, "--variant", "FLUX.1-schnell", "--dry-run", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(planted_cache))
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "model_index.json" in proc.stdout
    assert not (tmp_path / "ws" / "Library").exists()
