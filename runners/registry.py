"""Pipeline id -> how to run it (spec 3.3). Adding a model is one entry here plus its tier row."""

from __future__ import annotations

import os
from collections.abc import Callable

from runners.strategies import Docker, InProcess, Strategy, Subprocess
from studio.tiers import tier_for_pipeline

MODES = ("in-process", "subprocess", "docker")


def _flux(pipeline_id: str) -> Callable[[str], Strategy]:
    def build(mode: str) -> Strategy:
        if mode == "in-process":
            return InProcess()
        if mode == "subprocess":
            return Subprocess()
        volume = os.environ.get("STUDIO_WORKSPACE_VOLUME", "generative_studio_workspace")
        return Docker(image=tier_for_pipeline(pipeline_id).image, workspace_volume=volume)

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
