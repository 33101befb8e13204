"""A reserved take as the runner's request, with host paths, for every strategy alike.

The in-process strategy hands it to the runner as it is, the subprocess strategy as env vars
(``FluxRequest.to_env``), the container strategy with its paths mapped into the volume
(``runners/mount.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from runners.flux.contract import FluxRequest, LoraSpec, Quality
from runners.flux.tiers import get_tier
from studio.jobs import TakeJob


def models_root(workspace_root: Path) -> Path:
    """Where model folders live; `STUDIO_MODELS_ROOT` lets the demo keep its tiny model apart."""
    override = os.environ.get("STUDIO_MODELS_ROOT")
    return Path(override) if override else workspace_root / "Library" / "AI_Models"


def model_dir(workspace_root: Path, quality: Quality) -> Path:
    return models_root(workspace_root) / "flux" / get_tier(quality).variant


def take_request(job: TakeJob, *, workspace_root: Path, project_dir: Path,
                 preview_path: Path | None = None) -> FluxRequest:
    """The runner's request for one take. The prompt is the domain's, already composed (trigger
    words and style prompts in it): the LoRAs travel as files and weights only."""
    root = workspace_root.resolve()
    p = job.params
    return FluxRequest(
        prompt=p.prompt,
        negative_prompt=p.negative_prompt,
        seed=p.seed,
        cfg_scale=p.cfg_scale,
        steps=p.steps,
        width=p.width,
        height=p.height,
        output_path=(project_dir / job.output_path).resolve(),
        quality=job.quality_used,
        pipeline_id=job.pipeline_id,
        model_dir=model_dir(root, job.quality_used).resolve(),
        workspace=root,
        preview_path=preview_path.resolve() if preview_path is not None else None,
        loras=tuple(LoraSpec(path=lo.path, weight=lo.weight, kind=lo.kind) for lo in p.loras),
    )
