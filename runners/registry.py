"""Pipeline id -> how to run it (spec 3.3). Adding a model is one entry here plus its tier row."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from runners.strategies import Docker, InProcess, Strategy, Subprocess
from studio.tiers import tier_for_pipeline

MODES = ("in-process", "subprocess", "docker")


def docker_strategy(pipeline_id: str, environ: dict[str, str] | None = None) -> Docker:
    """The container-per-take strategy as configured: STUDIO_WORKSPACE_VOLUME (what /workspace
    mounts; default the named volume), STUDIO_WORKSPACE (where it lies on this host),
    STUDIO_CONTAINER_GPUS (`map`, the default: the tier's GPU in STUDIO_GPUS, else all;
    `all`; `none`; or `0,1`)."""
    from runners.gpus import gpu_map

    env = os.environ if environ is None else environ
    tier = tier_for_pipeline(pipeline_id)
    gpus = env.get("STUDIO_CONTAINER_GPUS", "map").strip()
    gpu_ids: list[str] | None
    if gpus == "all":
        gpu_ids = None
    elif gpus == "none":
        gpu_ids = []
    elif gpus == "map":
        index = gpu_map(env).get(tier.quality)
        gpu_ids = None if index is None else [str(index)]
    else:
        gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()]
    workspace = env.get("STUDIO_WORKSPACE")
    return Docker(
        image=env.get("STUDIO_RUNNER_IMAGE") or tier.image,
        workspace_volume=env.get("STUDIO_WORKSPACE_VOLUME", "generative_studio_workspace"),
        host_workspace=Path(workspace) if workspace else None,
        gpu_ids=gpu_ids,
    )


def _flux(pipeline_id: str) -> Callable[[str], Strategy]:
    def build(mode: str) -> Strategy:
        if mode == "in-process":
            return InProcess()
        if mode == "subprocess":
            return Subprocess()
        return docker_strategy(pipeline_id)

    return build


STRATEGIES: dict[str, Callable[[str], Strategy]] = {
    "flux-schnell-fp8": _flux("flux-schnell-fp8"),
    "flux-dev-fp8": _flux("flux-dev-fp8"),
    "flux-dev-bf16": _flux("flux-dev-bf16"),
}


def strategy_for(pipeline_id: str, mode: str | None = None) -> Strategy:
    """The strategy for a pipeline; mode from `STUDIO_RUNNER_MODE` (default in-process)."""
    mode = mode or os.environ.get("STUDIO_RUNNER_MODE", "in-process")
    if mode not in MODES:
        raise ValueError(f"unknown runner mode {mode!r}; choose one of {', '.join(MODES)}")
    try:
        factory = STRATEGIES[pipeline_id]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"no runner for pipeline {pipeline_id!r}; known: {known}") from None
    return factory(mode)
