"""One FLUX take, in process: validate a request, load (or reuse) the pipeline, render, write.

    from runners.flux.generation import FluxRequest, generate, request_from_env
    result = generate(FluxRequest(prompt="a fox", output_path="/workspace/x.png"), on_progress)

``on_progress(percent, step_text, preview_path)`` is called with a rising percent (0..100);
raising from it cancels the take (nothing is written at the output path). Errors are
``FluxError`` subclasses carrying the exit code of the container contract.

Importing this module is cheap: torch and diffusers are imported only once a request has been
validated, so bad input is refused at once.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.flux.errors import BadInput, FluxError, ModelMissing, OutOfMemory
from runners.flux.files import atomic_write_bytes, probe_writable
from runners.flux.metadata import SCHEMA, png_bytes
from runners.flux.tiers import (
    DEFAULT_QUALITY,
    TierSettings,
    get_tier,
    guidance_kwargs,
    uses_true_cfg,
)

ProgressFn = Callable[[int, str, "str | None"], None]

MODELS_SUBDIR = Path("Library") / "AI_Models" / "flux"
DEFAULT_WORKSPACE = "/workspace"
MIN_SIZE, MAX_SIZE, SIZE_STEP = 256, 2048, 16
MIN_STEPS, MAX_STEPS = 1, 100
MIN_CFG, MAX_CFG = 0.0, 20.0
MAX_SEED = 2**64 - 1
MAX_PROMPT_CHARS = 4000
MAX_LORAS = 8
LORA_WEIGHT_RANGE = (-4.0, 4.0)
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RUNNER_VERSION = "gms-flux 1.0"
# Progress bands: loading 2..10, LoRAs 11, encoding 12, denoising 15..90, decode 92, save 96.
_DENOISE_START, _DENOISE_END = 15, 90


@dataclass
class LoraSpec:
    """A character's or style's LoRA (``path`` relative to the workspace root)."""

    path: str
    weight: float = 1.0
    trigger_words: list[str] = field(default_factory=list)
    style_prompt: str = ""
    kind: str = "style"


@dataclass
class FluxRequest:
    """One take's inputs; ``None`` means "the tier's default" (seed: random, reported)."""

    prompt: str
    output_path: str | Path
    negative_prompt: str = ""
    seed: int | None = None
    cfg_scale: float | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    quality: str = DEFAULT_QUALITY
    model_dir: str | Path | None = None
    workspace: str | Path = DEFAULT_WORKSPACE
    preview_path: str | Path | None = None
    preview_every: int | None = None
    loras: list[LoraSpec | dict[str, Any]] = field(default_factory=list)
    pipeline_id: str | None = None


@dataclass(frozen=True)
class ResolvedLora:
    path: str  # as given (relative to the workspace)
    file: Path  # resolved, inside the workspace, exists
    weight: float
    trigger_words: tuple[str, ...]
    style_prompt: str
    kind: str


@dataclass(frozen=True)
class Plan:
    """A validated request with every default filled in: what will be rendered."""

    tier: TierSettings
    prompt: str
    full_prompt: str  # prompt + LoRA trigger words + style prompts
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


@dataclass
class FluxResult:
    output_path: Path
    seed: int
    width: int
    height: int
    steps: int
    cfg_scale: float
    quality: str
    variant: str
    model_dir: Path
    pipeline_id: str
    preview_path: Path | None  # the last preview written, if any
    metadata: dict[str, Any]
    settings: dict[str, Any]  # what the tier applied (dtypes, fp8, offload, ...)
    timings: dict[str, float]
    loaded_pipeline: bool  # True when this take had to load the pipeline
    notes: list[str]


# --------------------------------------------------------------------------- parsing the env


def _opt(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _parse_int(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw, 10)
    except ValueError:
        raise BadInput(f"{name} must be a whole number; got {raw!r}") from None


def _parse_float(name: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadInput(f"{name} must be a number; got {raw!r}") from None


def _parse_loras(raw: str | None) -> list[LoraSpec | dict[str, Any]]:
    if raw is None:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(f"LORAS must be a JSON list of objects: {exc.msg} (at {exc.pos})") from None
    if not isinstance(value, list):
        raise BadInput("LORAS must be a JSON list of objects {path, weight, ...}")
    return value


def request_from_env(env: Mapping[str, str] | None = None) -> FluxRequest:
    """Read the runner env contract (ARCHITECTURE.md) into a request; raises BadInput."""
    env = os.environ if env is None else env
    prompt = env.get("PROMPT", "")
    output = _opt(env, "OUTPUT_PATH")
    if not prompt.strip():
        raise BadInput("PROMPT is required and must not be empty")
    if output is None:
        raise BadInput("OUTPUT_PATH is required (where the PNG goes, inside STUDIO_WORKSPACE)")
    return FluxRequest(
        prompt=prompt,
        output_path=output,
        negative_prompt=env.get("NEGATIVE_PROMPT", ""),
        seed=_parse_int("SEED", _opt(env, "SEED")),
        cfg_scale=_parse_float("CFG_SCALE", _opt(env, "CFG_SCALE")),
        steps=_parse_int("STEPS", _opt(env, "STEPS")),
        width=_parse_int("WIDTH", _opt(env, "WIDTH")),
        height=_parse_int("HEIGHT", _opt(env, "HEIGHT")),
        quality=(_opt(env, "QUALITY") or DEFAULT_QUALITY).lower(),
        model_dir=_opt(env, "MODEL_DIR"),
        workspace=_opt(env, "STUDIO_WORKSPACE") or DEFAULT_WORKSPACE,
        preview_path=_opt(env, "PREVIEW_PATH"),
        preview_every=_parse_int("PREVIEW_EVERY", _opt(env, "PREVIEW_EVERY")),
        loras=_parse_loras(_opt(env, "LORAS")),
        pipeline_id=_opt(env, "PIPELINE_ID"),
    )


# --------------------------------------------------------------------------- validation


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


def _lora(workspace: Path, index: int, raw: LoraSpec | dict[str, Any]) -> ResolvedLora:
    name = f"LORAS[{index}]"
    if isinstance(raw, LoraSpec):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, dict):
        raise BadInput(f"{name} must be an object {{path, weight, ...}}; got {raw!r}")
    unknown = set(raw) - {"path", "weight", "trigger_words", "style_prompt", "kind"}
    if unknown:
        raise BadInput(f"{name} has unknown fields: {', '.join(sorted(unknown))}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip():
        raise BadInput(f"{name}.path is required (relative to STUDIO_WORKSPACE)")
    file = _inside(workspace, path, f"{name}.path")
    if file.suffix.lower() != ".safetensors":
        raise BadInput(f"{name}.path must be a .safetensors file; got {Path(path).name}")
    weight = _check_float(f"{name}.weight", raw.get("weight", 1.0), *LORA_WEIGHT_RANGE)
    words = raw.get("trigger_words") or []
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise BadInput(f"{name}.trigger_words must be a list of strings")
    style = raw.get("style_prompt") or ""
    if not isinstance(style, str):
        raise BadInput(f"{name}.style_prompt must be a string")
    kind = raw.get("kind", "style")
    if kind not in ("character", "style"):
        raise BadInput(f"{name}.kind must be 'character' or 'style'; got {kind!r}")
    if not file.is_file():
        raise ModelMissing(f"LoRA file not found: {path} (looked at {file})")
    return ResolvedLora(path, file, weight, tuple(w.strip() for w in words if w.strip()),
                        style.strip(), kind)


def compose_prompt(prompt: str, loras: tuple[ResolvedLora, ...]) -> str:
    """Trigger words first (unless the prompt already has them), then the prompt, then styles."""
    lowered = prompt.lower()
    words: list[str] = []
    for lora in loras:
        for word in lora.trigger_words:
            if word.lower() not in lowered and word not in words:
                words.append(word)
    styles = [lora.style_prompt for lora in loras if lora.style_prompt]
    return ", ".join([*words, prompt.strip(), *styles])


def default_model_dir(workspace: str | Path, quality: str) -> Path:
    """``$STUDIO_WORKSPACE/Library/AI_Models/flux/<variant>`` of a quality tier."""
    return Path(workspace) / MODELS_SUBDIR / get_tier(quality).variant


def _model_dir(workspace: Path, tier: TierSettings, raw: str | Path | None) -> Path:
    folder = Path(raw).expanduser() if raw else workspace / MODELS_SUBDIR / tier.variant
    if not (folder / "model_index.json").is_file():
        raise ModelMissing(
            f"{tier.variant} model not found at {folder} (no model_index.json). "
            "Download it with `make download-models` (FLUX.1-dev needs HF_TOKEN), "
            "or write a tiny test model with `python scripts/make_tiny_model.py <workspace>`."
        )
    return folder.resolve()


def validate_request(request: FluxRequest) -> Plan:
    """Check every value and fill in the tier defaults; no torch, so it is instant.

    Raises BadInput (exit 2) or ModelMissing (exit 3: model folder or LoRA file absent).
    """
    tier = get_tier(str(request.quality).lower())
    notes: list[str] = []
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise BadInput("PROMPT is required and must not be empty")
    if len(request.prompt) > MAX_PROMPT_CHARS:
        raise BadInput(f"PROMPT is longer than {MAX_PROMPT_CHARS} characters")
    negative = request.negative_prompt or ""
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS:
        raise BadInput(f"NEGATIVE_PROMPT must be text of at most {MAX_PROMPT_CHARS} characters")
    seed_was_random = request.seed is None
    # A random seed is still a concrete seed: it is reported and written into the PNG.
    seed = random.SystemRandom().randrange(2**32) if seed_was_random else request.seed
    seed = _check_int("SEED", seed, 0, MAX_SEED)
    steps = tier.default_steps if request.steps is None else request.steps
    steps = _check_int("STEPS", steps, MIN_STEPS, MAX_STEPS)
    if steps > tier.max_steps:
        notes.append(
            f"the {tier.quality} tier ({tier.variant}) renders at most {tier.max_steps} steps; "
            f"STEPS={steps} -> {tier.max_steps}"
        )
        steps = tier.max_steps
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
    width = _check_size("WIDTH", tier.default_size if request.width is None else request.width)
    height = _check_size("HEIGHT", tier.default_size if request.height is None else request.height)
    every = request.preview_every
    if every is None:
        every = max(1, round(steps / 4))  # about four previews per take
    every = _check_int("PREVIEW_EVERY", every, 0, 100)
    pipeline_id = request.pipeline_id or tier.pipeline_id
    if not isinstance(pipeline_id, str) or len(pipeline_id) > 128 or not pipeline_id.isprintable():
        raise BadInput(f"PIPELINE_ID must be printable text, <= 128 chars; got {pipeline_id!r}")
    if not isinstance(request.loras, list) or len(request.loras) > MAX_LORAS:
        raise BadInput(f"LORAS must be a list of at most {MAX_LORAS} entries")

    # File-system checks last: they cost a little more and are the ones a worker can fix.
    workspace = Path(request.workspace).expanduser()
    if not workspace.is_dir():
        raise BadInput(
            f"STUDIO_WORKSPACE {workspace} is not a folder (mount the workspace volume there)"
        )
    workspace = workspace.resolve()
    output = _file_path(workspace, request.output_path, "OUTPUT_PATH", (".png",))
    if request.preview_path:
        preview = _file_path(workspace, request.preview_path, "PREVIEW_PATH", PREVIEW_SUFFIXES)
    else:
        preview = output.with_name(f"{output.stem}.preview.png")
    if preview == output:
        raise BadInput("PREVIEW_PATH must differ from OUTPUT_PATH")
    loras = tuple(_lora(workspace, i, raw) for i, raw in enumerate(request.loras))
    model_dir = _model_dir(workspace, tier, request.model_dir)
    # Folders are created only once everything else is known to be fine.
    _make_writable_folder(output, "OUTPUT_PATH")
    if every and preview.parent != output.parent:
        _make_writable_folder(preview, "PREVIEW_PATH")
    return Plan(
        tier=tier,
        prompt=request.prompt.strip(),
        full_prompt=compose_prompt(request.prompt, loras),
        negative_prompt=negative.strip(),
        seed=seed,
        seed_was_random=seed_was_random,
        steps=steps,
        cfg_scale=cfg,
        guidance=guidance,
        width=width,
        height=height,
        workspace=workspace,
        output_path=output,
        preview_path=preview if every else None,
        preview_every=every,
        model_dir=model_dir,
        loras=loras,
        pipeline_id=pipeline_id,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- pipeline cache


@dataclass
class LoadedPipeline:
    """A loaded, tier-configured FluxPipeline and what belongs to it (one per cache key)."""

    pipe: Any
    tier: TierSettings
    model_dir: Path
    settings: dict[str, Any]
    device: Any  # torch.device the denoising runs on
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # one take at a time
    preview_matrix: Any = None  # fitted lazily, on the first take that wants previews
    embeds: OrderedDict = field(default_factory=OrderedDict)  # prompt-embedding cache
    encode_count: int = 0  # text-encoder runs (the cache avoids them)
    lora_signature: tuple = ()

    def encode(self, texts: list[str], max_sequence_length: int) -> list[tuple[Any, Any]]:
        """(prompt_embeds, pooled) per text; cached, so a repeated prompt skips T5/CLIP."""
        keys = [(text, max_sequence_length, self.lora_signature) for text in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self.embeds]
        if missing:
            import torch

            release = bool(self.settings.get("release_text_encoders"))
            if release:
                self._text_encoders_to(self.device)
            try:
                for key in missing:
                    with torch.no_grad():  # outside the pipeline's own no_grad: no graph kept
                        embeds, pooled, _ = self.pipe.encode_prompt(
                            prompt=key[0], prompt_2=None, device=self.device,
                            max_sequence_length=max_sequence_length,
                        )
                    self.embeds[key] = (embeds, pooled)
                    self.encode_count += 1
            finally:
                if release:
                    self._text_encoders_to("cpu")
        for key in keys:
            self.embeds.move_to_end(key)
        while len(self.embeds) > _EMBED_CACHE_SIZE:
            self.embeds.popitem(last=False)
        return [self.embeds[k] for k in keys]

    def _text_encoders_to(self, device: Any) -> None:
        import torch

        for name in ("text_encoder", "text_encoder_2"):
            getattr(self.pipe, name).to(device)
        if str(device) == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


_EMBED_CACHE_SIZE = 32
_CACHE: OrderedDict[tuple[str, str], LoadedPipeline] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOADS = 0


def load_count() -> int:
    """How many times this process really loaded a pipeline from disk."""
    return _LOADS


def clear_cache() -> None:
    """Drop every cached pipeline (frees its memory once no take uses it)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _max_pipelines(cuda: bool) -> int:
    raw = os.environ.get("FLUX_MAX_PIPELINES", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return 1 if cuda else 3  # one full-size FLUX fills a GPU; tiny CPU models are cheap


def _load(tier: TierSettings, model_dir: Path, workspace: Path | None) -> LoadedPipeline:
    from diffusers import FluxPipeline

    from runners.flux.optimize import torch_dtype

    start = time.perf_counter()
    try:
        pipe = FluxPipeline.from_pretrained(
            str(model_dir), dtype=torch_dtype(tier.compute_dtype), local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelMissing(f"{tier.variant} at {model_dir} is incomplete or unreadable: {exc}") \
            from exc
    return _configure(pipe, tier, model_dir, workspace, start)


def _configure(
    pipe: Any, tier: TierSettings, model_dir: Path, workspace: Path | None, start: float
) -> LoadedPipeline:
    from diffusers.utils.torch_utils import get_module_execution_device

    from runners.flux.optimize import apply_tier, pick_device

    has_guidance = bool(pipe.transformer.config.guidance_embeds)
    if has_guidance != tier.guidance_embeds:
        raise ModelMissing(
            f"{model_dir} does not hold {tier.variant}: its transformer has "
            f"guidance_embeds={has_guidance} (FLUX.1-dev has it, FLUX.1-schnell not)"
        )
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    settings = apply_tier(pipe, tier, pick_device(), workspace=workspace)
    return LoadedPipeline(
        pipe=pipe,
        tier=tier,
        model_dir=model_dir,
        settings=settings,
        device=get_module_execution_device(pipe.transformer),
        load_seconds=time.perf_counter() - start,
    )


def _get_pipeline(
    tier: TierSettings, model_dir: Path, workspace: Path | None
) -> tuple[LoadedPipeline, bool]:
    """The cached pipeline of (quality, model dir), loading it if needed; (entry, loaded_now)."""
    global _LOADS
    import torch

    key = (tier.quality, str(model_dir))
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is not None:
            _CACHE.move_to_end(key)
            return entry, False
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:  # one load per key, while other keys keep serving
        with _CACHE_LOCK:
            entry = _CACHE.get(key)
            if entry is not None:
                return entry, False
            limit = _max_pipelines(torch.cuda.is_available())
            evicted = False
            while len(_CACHE) >= limit:
                _CACHE.popitem(last=False)  # a take still using it keeps its own reference
                evicted = True
        if evicted:
            _free_memory()
        entry = _load(tier, model_dir, workspace)
        with _CACHE_LOCK:
            _CACHE[key] = entry
            _LOADS += 1
        return entry, True


def install_pipeline(
    quality: str, model_dir: str | Path, pipe: Any, workspace: str | Path | None = None
) -> dict[str, Any]:
    """Put an in-memory FluxPipeline (e.g. built with random weights by the GPU bench) into the
    cache as if it had been loaded from ``model_dir``; the tier's settings are applied to it.
    ``generate`` still checks that ``model_dir/model_index.json`` exists. Not counted as a load."""
    tier = get_tier(quality)
    folder = Path(model_dir).expanduser().resolve()
    ws = Path(workspace).expanduser().resolve() if workspace else None
    entry = _configure(pipe, tier, folder, ws, time.perf_counter())
    with _CACHE_LOCK:
        _CACHE[(tier.quality, str(folder))] = entry
    return dict(entry.settings)


def preload(
    quality: str, model_dir: str | Path | None = None, workspace: str | Path | None = None
) -> dict[str, Any]:
    """Load a tier's pipeline into the per-process cache (a warm worker calls it at start).

    Returns the applied settings. ``workspace`` defaults to $STUDIO_WORKSPACE (or /workspace).
    """
    tier = get_tier(quality)
    ws = Path(workspace or os.environ.get("STUDIO_WORKSPACE") or DEFAULT_WORKSPACE).expanduser()
    folder = _model_dir(ws, tier, model_dir)
    entry, _ = _get_pipeline(tier, folder, ws if ws.is_dir() else None)
    return dict(entry.settings)


# --------------------------------------------------------------------------- one take


class _Progress:
    """Forwards progress, never letting the percent go down."""

    def __init__(self, callback: ProgressFn | None) -> None:
        self.callback = callback
        self.percent = 0

    def __call__(self, percent: int, text: str, preview: str | None = None) -> None:
        self.percent = max(self.percent, min(100, max(0, int(percent))))
        if self.callback is not None:
            self.callback(self.percent, text, preview)


def _relative(path: Path, workspace: Path) -> str:
    return path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else str(path)


def build_metadata(plan: Plan, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to re-create the take (and nothing time- or path-of-output-dependent)."""
    import diffusers
    import torch

    return {
        "schema": SCHEMA,
        "prompt": plan.prompt,
        "full_prompt": plan.full_prompt,
        "negative_prompt": plan.negative_prompt,
        "seed": plan.seed,
        "steps": plan.steps,
        "cfg_scale": plan.cfg_scale,
        "guidance_scale": plan.guidance["guidance_scale"],
        "true_cfg_scale": plan.guidance["true_cfg_scale"],
        "width": plan.width,
        "height": plan.height,
        "quality": plan.tier.quality,
        "variant": plan.tier.variant,
        "model": plan.tier.repo_id,
        "model_dir": _relative(plan.model_dir, plan.workspace),
        "pipeline_id": plan.pipeline_id,
        "max_sequence_length": plan.tier.max_sequence_length,
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "generator": "torch.Generator('cpu').manual_seed(seed)",
        "precision": settings.get("fp8") or plan.tier.compute_dtype,
        "loras": [
            {"path": lo.path, "weight": lo.weight, "trigger_words": list(lo.trigger_words),
             "style_prompt": lo.style_prompt, "kind": lo.kind}
            for lo in plan.loras
        ],
        "runner": RUNNER_VERSION,
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
    }


def _image_bytes(image: Any, path: Path) -> bytes:
    import io

    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 85} if fmt != "PNG" else {}))
    return buf.getvalue()


def _apply_loras(entry: LoadedPipeline, plan: Plan, progress: _Progress) -> None:
    pipe = entry.pipe
    if entry.settings.get("fused_qkv"):
        pipe.transformer.unfuse_qkv_projections()  # LoRAs target the unfused to_q/to_k/to_v
    names = []
    for i, lora in enumerate(plan.loras):
        progress(11, f"Loading {lora.kind} LoRA {lora.file.name} (weight {lora.weight:g})")
        name = f"take_lora_{i}"
        try:
            pipe.load_lora_weights(str(lora.file), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BadInput(
                f"LoRA {lora.path} does not fit {plan.tier.variant} (not a FLUX LoRA?): {exc}"
            ) from exc
        # diffusers only warns when no key matches a layer: such a file would silently do nothing.
        if not any(name in found for found in pipe.get_list_adapters().values()):
            raise BadInput(
                f"LoRA {lora.path} does not fit {plan.tier.variant}: none of its weights "
                "matches a FLUX layer (a LoRA for another model?)"
            )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.weight for lora in plan.loras])
    entry.lora_signature = tuple(
        (str(lo.file), lo.file.stat().st_mtime_ns, lo.weight) for lo in plan.loras
    )


def _reset_loras(entry: LoadedPipeline) -> None:
    """Leave the cached pipeline exactly as loaded for the next take."""
    entry.pipe.unload_lora_weights()
    entry.lora_signature = ()
    if entry.settings.get("fused_qkv"):
        entry.pipe.transformer.fuse_qkv_projections()


def _render(entry: LoadedPipeline, plan: Plan, progress: _Progress, timings: dict) -> tuple:
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    pipe, tier, device = entry.pipe, plan.tier, entry.device
    text = "Encoding prompt"
    if uses_true_cfg(plan.guidance):
        text += " (negative prompt: true CFG, 2 passes per step, ~2x time)"
    progress(12, text)
    start = time.perf_counter()
    texts = [plan.full_prompt] + ([plan.negative_prompt] if uses_true_cfg(plan.guidance) else [])
    encoded = entry.encode(texts, tier.max_sequence_length)
    timings["encode"] = time.perf_counter() - start
    embeds, pooled = encoded[0]
    negative: dict[str, Any] = {}
    if len(encoded) > 1:
        negative = {"negative_prompt_embeds": encoded[1][0],
                    "negative_pooled_prompt_embeds": encoded[1][1]}

    # The starting noise is drawn here, exactly as the pipeline would (CPU generator, so the same
    # seed gives the same image on any device), because the first preview needs it.
    generator = torch.Generator("cpu").manual_seed(plan.seed)
    channels = pipe.transformer.config.in_channels // 4
    latents, _ = pipe.prepare_latents(
        1, channels, plan.height, plan.width, embeds.dtype, device, generator
    )

    renderer = None
    if plan.preview_every:
        from runners.flux.preview import PreviewRenderer, fit_latent_to_rgb

        if entry.preview_matrix is None:  # once per loaded pipeline
            start = time.perf_counter()
            entry.preview_matrix = fit_latent_to_rgb(pipe)
            timings["preview_fit"] = time.perf_counter() - start
        renderer = PreviewRenderer(pipe, entry.preview_matrix, plan.width, plan.height)
        renderer.start(latents)
    last_preview: list[Path] = []

    def on_step(_pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done = index + 1
        percent = _DENOISE_START + (_DENOISE_END - _DENOISE_START) * done // plan.steps
        preview = None
        if renderer is not None:
            x0 = renderer.step(index, kwargs["latents"])
            if done % plan.preview_every == 0 and plan.preview_path is not None:
                image = renderer.image(x0)
                atomic_write_bytes(plan.preview_path, _image_bytes(image, plan.preview_path),
                                   durable=False)
                preview = str(plan.preview_path)
                last_preview[:] = [plan.preview_path]
        progress(percent, f"Denoising step {done}/{plan.steps}", preview)
        return kwargs

    progress(_DENOISE_START, f"Denoising step 0/{plan.steps}")
    start = time.perf_counter()
    out = pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        **negative,
        **plan.guidance,
        height=plan.height,
        width=plan.width,
        num_inference_steps=plan.steps,
        latents=latents,
        generator=generator,
        output_type="latent",
        max_sequence_length=tier.max_sequence_length,
        callback_on_step_end=on_step,
    ).images
    timings["denoise"] = time.perf_counter() - start

    progress(92, "Decoding image")
    start = time.perf_counter()
    with torch.no_grad():
        lat = pipe._unpack_latents(out, plan.height, plan.width, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        lat = lat.to(device=get_module_execution_device(pipe.vae), dtype=pipe.vae.dtype)
        decoded = pipe.vae.decode(lat, return_dict=False)[0]
    image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    timings["decode"] = time.perf_counter() - start
    return image, (last_preview[0] if last_preview else None)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:
        return False
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def generate(
    request: FluxRequest | Plan, on_progress: ProgressFn | None = None
) -> FluxResult:
    """Render one take and write it atomically at ``request.output_path``.

    Raises BadInput (2), ModelMissing (3), OutOfMemory (4) or another FluxError/Exception (1);
    on any failure nothing is left at the output path.
    """
    started = time.perf_counter()
    plan = request if isinstance(request, Plan) else validate_request(request)
    timings = {"validate": time.perf_counter() - started}
    progress = _Progress(on_progress)
    progress(0, f"Starting {plan.tier.variant} ({plan.tier.quality} tier)")
    try:
        progress(2, f"Loading {plan.tier.variant} ({plan.tier.quality} tier)")
        start = time.perf_counter()
        entry, loaded = _get_pipeline(plan.tier, plan.model_dir, plan.workspace)
        timings["load"] = time.perf_counter() - start
        progress(10, f"Model loaded in {entry.load_seconds:.1f} s" if loaded
                 else "Model already loaded")
        with entry.lock:
            try:
                if plan.loras:
                    start = time.perf_counter()
                    _apply_loras(entry, plan, progress)
                    timings["lora"] = time.perf_counter() - start
                image, preview = _render(entry, plan, progress, timings)
            finally:
                if plan.loras:
                    _reset_loras(entry)
        progress(96, "Saving image")
        start = time.perf_counter()
        meta = build_metadata(plan, entry.settings)
        atomic_write_bytes(plan.output_path, png_bytes(image, meta))
        timings["save"] = time.perf_counter() - start
    except FluxError:
        raise
    except BaseException as exc:
        if _is_oom(exc):
            _free_memory()
            raise OutOfMemory(
                f"out of memory rendering {plan.width}x{plan.height} on the {plan.tier.quality} "
                f"tier: try a smaller size or a lower quality tier ({exc})"
            ) from exc
        raise
    timings["total"] = time.perf_counter() - started
    progress(100, "Done")
    return FluxResult(
        output_path=plan.output_path,
        seed=plan.seed,
        width=plan.width,
        height=plan.height,
        steps=plan.steps,
        cfg_scale=plan.cfg_scale,
        quality=plan.tier.quality,
        variant=plan.tier.variant,
        model_dir=plan.model_dir,
        pipeline_id=plan.pipeline_id,
        preview_path=preview,
        metadata=meta,
        settings=dict(entry.settings),
        timings=timings,
        loaded_pipeline=loaded,
        notes=list(plan.notes),
    )
