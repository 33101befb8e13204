"""One FLUX take, in process: plan a request, load (or reuse) the pipeline, render, write.

    from runners.flux.generation import FluxRequest, generate
    result = generate(FluxRequest(prompt="a fox", output_path="/workspace/x.png"), on_progress)

``on_progress(percent, step_text, preview_path)`` is called with a rising percent (0..100);
raising from it cancels the take (nothing is written at the output path). Errors are
``FluxError`` subclasses carrying the contract's exit code (``runners/flux/contract.py``).

Importing this module is cheap: torch and diffusers are imported only once a request has been
planned, so bad input is refused at once. The parts: ``plan`` (checks and defaults),
``pipeline_cache``, ``loras``, ``guidance``, ``render`` (the loop), ``output`` (the files).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.flux.contract import (
    DEFAULT_WORKSPACE,
    FluxError,
    FluxRequest,
    LoraSpec,
    OutOfMemory,
    ProgressCallback,
    Quality,
)
from runners.flux.loras import apply_loras, reset_loras
from runners.flux.output import write_take
from runners.flux.pipeline_cache import PIPELINES, LoadedPipeline, configure, free_memory
from runners.flux.plan import Plan, default_model_dir, plan_take, resolve_model_dir
from runners.flux.render import Progress, render
from runners.flux.tiers import get_tier

__all__ = ["FluxRequest", "FluxResult", "LoraSpec", "Plan", "clear_cache", "default_model_dir",
           "generate", "install_pipeline", "load_count", "plan_take", "preload",
           "request_from_env"]


@dataclass
class FluxResult:
    output_path: Path
    seed: int
    width: int
    height: int
    steps: int
    cfg_scale: float
    quality: Quality
    variant: str
    model_dir: Path
    pipeline_id: str
    preview_path: Path | None  # the last preview written, if any
    metadata: dict[str, Any]
    settings: dict[str, Any]  # what the tier applied (dtypes, fp8, offload, ...)
    timings: dict[str, float]
    loaded_pipeline: bool  # True when this take had to load the pipeline
    notes: list[str]


def request_from_env(env: Mapping[str, str] | None = None) -> FluxRequest:
    """The request of this process's env (or of ``env``); raises BadInput."""
    return FluxRequest.from_env(os.environ if env is None else env)


def load_count() -> int:
    """How many times this process really loaded a pipeline from disk."""
    return PIPELINES.loads


def clear_cache() -> None:
    """Drop every cached pipeline (frees its memory once no take uses it)."""
    PIPELINES.clear()


def cached_pipeline(quality: Quality | str, model_dir: Path) -> LoadedPipeline | None:
    return PIPELINES.peek(get_tier(quality), model_dir.resolve())


def install_pipeline(
    quality: Quality | str, model_dir: str | Path, pipe: Any, workspace: str | Path | None = None
) -> dict[str, Any]:
    """Put an in-memory FluxPipeline (e.g. built with random weights by the GPU bench) into the
    cache as if it had been loaded from ``model_dir``; the tier's settings are applied to it.
    ``generate`` still checks that ``model_dir/model_index.json`` exists. Not counted as a load."""
    folder = Path(model_dir).expanduser().resolve()
    ws = Path(workspace).expanduser().resolve() if workspace else None
    entry = configure(pipe, get_tier(quality), folder, ws, time.perf_counter())
    PIPELINES.install(entry)
    return dict(entry.settings)


def preload(
    quality: Quality | str, model_dir: str | Path | None = None,
    workspace: str | Path | None = None,
) -> dict[str, Any]:
    """Load a tier's pipeline into the per-process cache (a warm worker calls it at start).

    Returns the applied settings. ``workspace`` defaults to $STUDIO_WORKSPACE (or /workspace).
    """
    tier = get_tier(quality)
    ws = Path(workspace or os.environ.get("STUDIO_WORKSPACE") or DEFAULT_WORKSPACE).expanduser()
    folder = resolve_model_dir(ws, tier, model_dir)
    entry, _ = PIPELINES.get(tier, folder, ws if ws.is_dir() else None)
    return dict(entry.settings)


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
    except ImportError:
        return False
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _run(plan: Plan, progress: Progress, timings: dict[str, float]) -> tuple[Any, ...]:
    """Load, render and write; (entry, loaded_now, metadata, last preview)."""
    progress(2, f"Loading {plan.tier.variant} ({plan.tier.quality} tier)")
    start = time.perf_counter()
    entry, loaded = PIPELINES.get(plan.tier, plan.model_dir, plan.workspace)
    timings["load"] = time.perf_counter() - start
    progress(10, f"Model loaded in {entry.load_seconds:.1f} s" if loaded
             else "Model already loaded")
    with entry.lock:
        try:
            if plan.loras:
                start = time.perf_counter()
                apply_loras(entry, plan, progress)
                timings["lora"] = time.perf_counter() - start
            image, preview = render(entry, plan, progress, timings)
        finally:
            if plan.loras:
                reset_loras(entry)
    progress(96, "Saving image")
    start = time.perf_counter()
    meta = write_take(plan, image, entry.settings)
    timings["save"] = time.perf_counter() - start
    return entry, loaded, meta, preview


def generate(
    request: FluxRequest | Plan, on_progress: ProgressCallback | None = None
) -> FluxResult:
    """Render one take and write it atomically at ``request.output_path``.

    Raises BadInput (2), ModelMissing (3), OutOfMemory (4) or another FluxError/Exception (1);
    on any failure nothing is left at the output path.
    """
    started = time.perf_counter()
    plan = request if isinstance(request, Plan) else plan_take(request)
    timings = {"validate": time.perf_counter() - started}
    progress = Progress(on_progress)
    progress(0, f"Starting {plan.tier.variant} ({plan.tier.quality} tier)")
    try:
        entry, loaded, meta, preview = _run(plan, progress, timings)
    except FluxError:
        raise
    except BaseException as exc:
        if _is_oom(exc):
            free_memory()
            raise OutOfMemory(
                f"out of memory rendering {plan.width}x{plan.height} on the {plan.tier.quality} "
                f"tier: try a smaller size or a lower quality tier ({exc})"
            ) from exc
        raise
    timings["total"] = time.perf_counter() - started
    progress(100, "Done")
    return FluxResult(
        output_path=plan.output_path, seed=plan.seed, width=plan.width, height=plan.height,
        steps=plan.steps, cfg_scale=plan.cfg_scale, quality=plan.tier.quality,
        variant=plan.tier.variant, model_dir=plan.model_dir, pipeline_id=plan.pipeline_id,
        preview_path=preview, metadata=meta, settings=dict(entry.settings), timings=timings,
        loaded_pipeline=loaded, notes=list(plan.notes),
    )
