"""A request checked and completed with its tier's defaults: the plan of what will be rendered.

No torch here, so bad input is refused in milliseconds, before the heavy imports.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.flux.contract import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    PREVIEW_SUFFIXES,
    BadInput,
    FluxRequest,
    LoraSpec,
    ModelMissing,
    preview_path_for,
)
from runners.flux.files import probe_writable
from runners.flux.guidance import guidance_kwargs, uses_true_cfg
from runners.flux.tiers import TierSettings, get_tier

MODELS_SUBDIR = Path("Library") / "AI_Models" / "flux"
MIN_SIZE, MAX_SIZE, SIZE_STEP = 256, 2048, 16
MIN_STEPS, MAX_STEPS = 1, 100
MIN_CFG, MAX_CFG = 0.0, 20.0
MAX_LORAS = 8


@dataclass(frozen=True)
class ResolvedLora:
    path: str  # as given (relative to the workspace)
    file: Path  # resolved, inside the workspace, exists
    weight: float
    kind: str


@dataclass(frozen=True)
class Plan:
    """A validated request with every default filled in: what will be rendered."""

    tier: TierSettings
    prompt: str
    negative_prompt: str
    seed: int
    seed_was_random: bool
    steps: int
    cfg_scale: float
    guidance: dict[str, float]
    width: int
    height: int
    workspace: Path
    output_path: Path
    preview_path: Path | None
    preview_every: int
    model_dir: Path
    loras: tuple[ResolvedLora, ...]
    pipeline_id: str
    notes: tuple[str, ...]


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be a whole number; got {value!r}")
    if not low <= value <= high:
        raise BadInput(f"{name} must be between {low} and {high}; got {value}")
    return value


def _check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise BadInput(f"{name} must be a finite number between {low:g} and {high:g}; got {value}")
    return float(value)


def _check_size(name: str, value: Any) -> int:
    value = _check_int(name, value, MIN_SIZE, MAX_SIZE)
    if value % SIZE_STEP:
        lower = value - value % SIZE_STEP
        raise BadInput(
            f"{name} must be a multiple of {SIZE_STEP} (FLUX packs 8x latents in 2x2 patches); "
            f"got {value}, try {max(lower, MIN_SIZE)} or {lower + SIZE_STEP}"
        )
    return value


def _inside(workspace: Path, raw: str | Path, name: str) -> Path:
    """``raw`` (absolute, or relative to the workspace) resolved; must stay inside it."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = workspace / path
    resolved = path.resolve()  # follows symlinks, so a link cannot smuggle a path out
    if resolved == workspace or not resolved.is_relative_to(workspace):
        raise BadInput(f"{name} must lie inside STUDIO_WORKSPACE ({workspace}); got {raw}")
    return resolved


def _file_path(workspace: Path, raw: str | Path, name: str, suffixes: tuple[str, ...]) -> Path:
    path = _inside(workspace, raw, name)
    if path.suffix.lower() not in suffixes:
        raise BadInput(f"{name} must end with {' or '.join(suffixes)}; got {path.name}")
    if path.is_dir():
        raise BadInput(f"{name} is a folder, not a file: {path}")
    return path


def _make_writable_folder(path: Path, name: str) -> None:
    """Create the file's folder (the shot folder may not exist yet) and prove it is writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe_writable(path.parent)
    except OSError as exc:
        raise BadInput(f"{name}: cannot write in {path.parent}: {exc.strerror or exc}") from None


def _resolve_lora(workspace: Path, index: int, lora: LoraSpec) -> ResolvedLora:
    name = f"LORAS[{index}].path"
    file = _inside(workspace, lora.path, name)
    if file.suffix.lower() != ".safetensors":
        raise BadInput(f"{name} must be a .safetensors file; got {Path(lora.path).name}")
    if not file.is_file():
        raise ModelMissing(f"LoRA file not found: {lora.path} (looked at {file})")
    return ResolvedLora(lora.path, file, lora.weight, lora.kind)


def default_model_dir(workspace: str | Path, quality: str) -> Path:
    """``$STUDIO_WORKSPACE/Library/AI_Models/flux/<variant>`` of a quality tier."""
    return Path(workspace) / MODELS_SUBDIR / get_tier(quality).variant


def resolve_model_dir(workspace: Path, tier: TierSettings, raw: str | Path | None) -> Path:
    folder = Path(raw).expanduser() if raw else workspace / MODELS_SUBDIR / tier.variant
    if not (folder / "model_index.json").is_file():
        raise ModelMissing(
            f"{tier.variant} model not found at {folder} (no model_index.json). "
            "Download it with `make download-models` (FLUX.1-dev needs HF_TOKEN), "
            "or write a tiny test model with `python scripts/make_tiny_model.py <workspace>`."
        )
    return folder.resolve()


def _check_texts(request: FluxRequest) -> str:
    """The negative prompt, once both texts are known to fit."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise BadInput("PROMPT is required and must not be empty")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise BadInput(f"PROMPT is longer than {MAX_PROMPT_CHARS} characters")
    negative = request.negative_prompt or ""
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS:
        raise BadInput(f"NEGATIVE_PROMPT must be text of at most {MAX_PROMPT_CHARS} characters")
    return negative


def _steps(request: FluxRequest, tier: TierSettings, notes: list[str]) -> int:
    steps = tier.default_steps if request.steps is None else request.steps
    steps = _check_int("STEPS", steps, MIN_STEPS, MAX_STEPS)
    if steps > tier.max_steps:
        notes.append(
            f"the {tier.quality} tier ({tier.variant}) renders at most {tier.max_steps} steps; "
            f"STEPS={steps} -> {tier.max_steps}"
        )
        steps = tier.max_steps
    return steps


def _guidance(request: FluxRequest, tier: TierSettings, negative: str,
              notes: list[str]) -> tuple[float, dict[str, float]]:
    cfg = tier.default_cfg if request.cfg_scale is None else request.cfg_scale
    cfg = _check_float("CFG_SCALE", cfg, MIN_CFG, MAX_CFG)
    guidance = guidance_kwargs(tier, cfg, negative)
    if uses_true_cfg(guidance):
        notes.append(
            f"negative prompt: true CFG (true_cfg_scale={guidance['true_cfg_scale']:g}) runs the "
            "transformer twice per step: about 2x the time"
        )
    elif not tier.guidance_embeds and request.cfg_scale not in (None, 0, 0.0):
        notes.append(f"{tier.variant} has no guidance input: CFG_SCALE={cfg:g} has no effect")
    return cfg, guidance


def _pipeline_id(request: FluxRequest, tier: TierSettings) -> str:
    pipeline_id = request.pipeline_id or tier.pipeline_id
    if not isinstance(pipeline_id, str) or len(pipeline_id) > 128 or not pipeline_id.isprintable():
        raise BadInput(f"PIPELINE_ID must be printable text, <= 128 chars; got {pipeline_id!r}")
    return pipeline_id


def _workspace(request: FluxRequest) -> Path:
    workspace = Path(request.workspace).expanduser()
    if not workspace.is_dir():
        raise BadInput(
            f"STUDIO_WORKSPACE {workspace} is not a folder (mount the workspace volume there)"
        )
    return workspace.resolve()


def _places(request: FluxRequest, workspace: Path, every: int) -> tuple[Path, Path | None]:
    """The output and preview files, inside the workspace; their folders exist and are
    writable. Folders are created only once everything else is known to be fine."""
    output = _file_path(workspace, request.output_path, "OUTPUT_PATH", (".png",))
    if request.preview_path:
        preview = _file_path(workspace, request.preview_path, "PREVIEW_PATH", PREVIEW_SUFFIXES)
    else:
        preview = preview_path_for(output)
    if preview == output:
        raise BadInput("PREVIEW_PATH must differ from OUTPUT_PATH")
    return output, (preview if every else None)


def plan_take(request: FluxRequest) -> Plan:
    """Check every value and fill in the tier defaults; no torch, so it is instant.

    Raises BadInput (exit 2) or ModelMissing (exit 3: model folder or LoRA file absent).
    """
    tier = get_tier(request.quality)
    notes: list[str] = []
    negative = _check_texts(request)
    seed_was_random = request.seed is None
    # A random seed is still a concrete seed: it is reported and written into the PNG.
    seed = random.SystemRandom().randrange(MAX_SEED + 1) if seed_was_random else request.seed
    seed = _check_int("SEED", seed, 0, MAX_SEED)
    steps = _steps(request, tier, notes)
    cfg, guidance = _guidance(request, tier, negative, notes)
    width = _check_size("WIDTH", tier.default_size if request.width is None else request.width)
    height = _check_size("HEIGHT", tier.default_size if request.height is None else request.height)
    every = max(1, round(steps / 4)) if request.preview_every is None else request.preview_every
    every = _check_int("PREVIEW_EVERY", every, 0, 100)  # default: about four previews per take
    pipeline_id = _pipeline_id(request, tier)
    if len(request.loras) > MAX_LORAS:
        raise BadInput(f"LORAS must be a list of at most {MAX_LORAS} entries")
    # File-system checks last: they cost a little more and are the ones a worker can fix.
    workspace = _workspace(request)
    output, preview = _places(request, workspace, every)
    loras = tuple(_resolve_lora(workspace, i, lo) for i, lo in enumerate(request.loras))
    model_dir = resolve_model_dir(workspace, tier, request.model_dir)
    _make_writable_folder(output, "OUTPUT_PATH")
    if preview is not None and preview.parent != output.parent:
        _make_writable_folder(preview, "PREVIEW_PATH")
    return Plan(
        tier=tier, prompt=request.prompt.strip(), negative_prompt=negative.strip(), seed=seed,
        seed_was_random=seed_was_random, steps=steps, cfg_scale=cfg, guidance=guidance,
        width=width, height=height, workspace=workspace, output_path=output,
        preview_path=preview, preview_every=every, model_dir=model_dir, loras=loras,
        pipeline_id=pipeline_id, notes=tuple(notes),
    )
