"""A reserved take as the runner's request, and a request as the runner's plan (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.flux.contract import MAX_SEED, BadInput, FluxRequest, LoraSpec, ModelMissing, Quality
from runners.flux.plan import plan_take
from runners.take_request import model_dir, take_request
from studio.jobs import GenerationParams, LoraRef, TakeJob
from studio.manifest import Shot


def _job(quality: Quality = Quality.low) -> TakeJob:
    return TakeJob(
        project_id="P", node_id="shot10", take_id="t1", take_number=1,
        shot=Shot(scene="SCENE_01", shot="SHOT_010", version="v01"),
        output_path="03_Renders/SCENE_01/SHOT_010/SHOT-010_v01_take01.png",
        quality_requested=Quality.high, quality_used=quality, pipeline_id="flux-schnell-fp8",
        params=GenerationParams(
            prompt="alexchar, a lone astronaut, film noir", negative_prompt="", seed=7, steps=4,
            cfg_scale=0.0, width=512, height=512,
            loras=[LoraRef(kind="character", path="Library/LoRAs/alex.safetensors", weight=0.8,
                           trigger_words=["alexchar"], style_prompt="")]),
    )


def test_a_take_becomes_a_request_with_host_paths_and_the_domains_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STUDIO_MODELS_ROOT", raising=False)
    project = tmp_path / "Projects" / "P"

    request = take_request(_job(), workspace_root=tmp_path, project_dir=project)

    assert request.prompt == "alexchar, a lone astronaut, film noir"  # composed once, upstream
    assert request.loras == (LoraSpec("Library/LoRAs/alex.safetensors", 0.8, "character"),)
    assert request.output_path == (project / _job().output_path).resolve()
    assert request.model_dir == (tmp_path / "Library/AI_Models/flux/FLUX.1-schnell").resolve()
    assert (request.quality, request.seed, request.pipeline_id) == (
        Quality.low, 7, "flux-schnell-fp8")
    assert FluxRequest.from_env(request.to_env()) == request


def test_the_models_may_live_apart_from_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_MODELS_ROOT", str(tmp_path / "models"))
    assert model_dir(tmp_path, Quality.high) == tmp_path / "models" / "flux" / "FLUX.1-dev"


def _workspace(tmp_path: Path, variant: str = "FLUX.1-dev") -> Path:
    model = tmp_path / "Library" / "AI_Models" / "flux" / variant
    model.mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    return tmp_path


def test_a_plan_fills_in_the_tiers_defaults_and_a_reported_random_seed(tmp_path: Path) -> None:
    plan = plan_take(FluxRequest(prompt=" a fox ", output_path="Projects/P/take01.png",
                                 workspace=_workspace(tmp_path)))

    assert (plan.steps, plan.cfg_scale, plan.width, plan.height) == (28, 3.5, 1024, 1024)
    assert plan.prompt == "a fox" and plan.seed_was_random and 0 <= plan.seed <= MAX_SEED
    assert plan.preview_every == 7  # about four previews
    assert plan.preview_path == tmp_path.resolve() / "Projects/P/take01.preview.png"
    assert plan.output_path.parent.is_dir()  # the shot folder is made for the take


def test_a_plan_clamps_schnells_steps_and_says_so(tmp_path: Path) -> None:
    plan = plan_take(FluxRequest(prompt="a fox", output_path="x.png", quality="low", steps=28,
                                 workspace=_workspace(tmp_path, "FLUX.1-schnell")))
    assert plan.steps == 4
    assert plan.notes == ("the low tier (FLUX.1-schnell) renders at most 4 steps; STEPS=28 -> 4",)


def test_no_previews_when_preview_every_is_zero(tmp_path: Path) -> None:
    plan = plan_take(FluxRequest(prompt="a fox", output_path="x.png", preview_every=0,
                                 workspace=_workspace(tmp_path)))
    assert plan.preview_path is None


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"seed": MAX_SEED + 1}, BadInput, f"SEED must be between 0 and {MAX_SEED}"),
        ({"prompt": "x" * 4001}, BadInput, "PROMPT is longer than 4000 characters"),
        ({"output_path": "x.png", "preview_path": "x.png"}, BadInput,
         "PREVIEW_PATH must differ from OUTPUT_PATH"),
        ({"loras": [{"path": f"l{i}.safetensors"} for i in range(9)]}, BadInput,
         "LORAS must be a list of at most 8 entries"),
        ({"loras": [{"path": "gone.safetensors"}]}, ModelMissing, "LoRA file not found"),
        ({"quality": "high", "model_dir": "/nowhere"}, ModelMissing,
         "FLUX.1-dev model not found at /nowhere"),
    ],
)
def test_a_plan_refuses_what_cannot_render(
    tmp_path: Path, values: dict, error: type, message: str
) -> None:
    fields = {"prompt": "a fox", "output_path": "y.png", **values}
    with pytest.raises(error, match=message.replace("(", r"\(")):
        plan_take(FluxRequest(workspace=_workspace(tmp_path), **fields))
    assert not (tmp_path / "y.png").exists()
