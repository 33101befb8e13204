"""What a take leaves on disk: the PNG with its parameters, and the live previews."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from runners.flux.files import atomic_write_bytes
from runners.flux.metadata import SCHEMA, png_bytes
from runners.flux.plan import Plan

RUNNER_VERSION = "gms-flux 1.0"


def _relative(path: Path, workspace: Path) -> str:
    return path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else str(path)


def build_metadata(plan: Plan, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to re-create the take (and nothing time- or path-of-output-dependent)."""
    import diffusers
    import torch

    return {
        "schema": SCHEMA,
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "seed": plan.seed,
        "steps": plan.steps,
        "cfg_scale": plan.cfg_scale,
        "guidance_scale": plan.guidance["guidance_scale"],
        "true_cfg_scale": plan.guidance["true_cfg_scale"],
        "width": plan.width,
        "height": plan.height,
        "quality": plan.tier.quality.value,
        "variant": plan.tier.variant,
        "model": plan.tier.repo_id,
        "model_dir": _relative(plan.model_dir, plan.workspace),
        "pipeline_id": plan.pipeline_id,
        "max_sequence_length": plan.tier.max_sequence_length,
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "generator": "torch.Generator('cpu').manual_seed(seed)",
        "precision": settings.get("fp8") or plan.tier.compute_dtype,
        "loras": [{"path": lo.path, "weight": lo.weight, "kind": lo.kind} for lo in plan.loras],
        "runner": RUNNER_VERSION,
        "versions": {"diffusers": diffusers.__version__, "torch": torch.__version__},
    }


def write_take(plan: Plan, image: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """The PNG, atomically at the output path (durable); returns the metadata it carries."""
    meta = build_metadata(plan, settings)
    atomic_write_bytes(plan.output_path, png_bytes(image, meta))
    return meta


def write_preview(path: Path, image: Any) -> None:
    """A preview replaces the last one a moment later: atomic, but not fsynced."""
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 85} if fmt != "PNG" else {}))
    atomic_write_bytes(path, buf.getvalue(), durable=False)
