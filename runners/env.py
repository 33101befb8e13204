"""A take as the runner's env-var contract (ARCHITECTURE.md), for every strategy alike.

All three strategies hand the runner the same variables; only the transport differs
(a function call, a child process, a container).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from studio.jobs import TakeJob
from studio.tiers import tier_for_pipeline

CONTAINER_WORKSPACE = PurePosixPath("/workspace")


def models_root(workspace_root: Path) -> Path:
    """Where model folders live; `STUDIO_MODELS_ROOT` lets the demo keep its tiny model apart."""
    override = os.environ.get("STUDIO_MODELS_ROOT")
    return Path(override) if override else workspace_root / "Library" / "AI_Models"


def model_dir(workspace_root: Path, pipeline_id: str) -> Path:
    return models_root(workspace_root) / "flux" / tier_for_pipeline(pipeline_id).variant


def container_path(path: Path, workspace_root: Path) -> str:
    """The path a container sees for a host path on the workspace volume (mounted at /workspace).

    Raises ValueError for a path outside the workspace: a container could not reach it.
    """
    root = workspace_root.resolve()
    resolved = path.resolve()
    try:
        relative = resolved.relative_to(root)
    except ValueError:
        raise ValueError(f"{resolved} is outside the workspace {root}: a runner container sees "
                         f"only the workspace volume at {CONTAINER_WORKSPACE}") from None
    return str(CONTAINER_WORKSPACE / relative.as_posix()) if relative.parts else \
        str(CONTAINER_WORKSPACE)


def host_path(path: str, workspace_root: Path) -> Path:
    """The host path of a path a container reported (the inverse of `container_path`); a path
    outside /workspace is returned as it is."""
    pure = PurePosixPath(path)
    try:
        relative = pure.relative_to(CONTAINER_WORKSPACE)
    except ValueError:
        return Path(path)
    return workspace_root.resolve().joinpath(*relative.parts)


def runner_env(
    job: TakeJob,
    *,
    workspace_root: Path,
    project_dir: Path,
    preview_path: Path | None = None,
    in_container: bool = False,
) -> dict[str, str]:
    """The env for one take. Paths are host paths, or /workspace/... when `in_container`."""
    workspace_root = workspace_root.resolve()
    output = (project_dir / job.output_path).resolve()
    mdir = model_dir(workspace_root, job.pipeline_id).resolve()

    def place(path: Path) -> str:
        return container_path(path, workspace_root) if in_container else str(path)

    p = job.params
    env = {
        "PROMPT": p.prompt,
        "NEGATIVE_PROMPT": p.negative_prompt,
        "SEED": str(p.seed),
        "CFG_SCALE": repr(p.cfg_scale),
        "STEPS": str(p.steps),
        "WIDTH": str(p.width),
        "HEIGHT": str(p.height),
        "OUTPUT_PATH": place(output),
        "QUALITY": job.quality_used.value,
        "PIPELINE_ID": job.pipeline_id,
        "MODEL_DIR": place(mdir),
        "STUDIO_WORKSPACE": str(CONTAINER_WORKSPACE) if in_container else str(workspace_root),
    }
    if preview_path is not None:
        env["PREVIEW_PATH"] = place(preview_path.resolve())
    if p.loras:
        # The domain's prompt is final (trigger words and style prompts are in it), so the
        # runner gets only what to load; it would otherwise add the words a second time.
        loras = [{**lora.model_dump(), "trigger_words": [], "style_prompt": ""}
                 for lora in p.loras]
        env["LORAS"] = json.dumps(loras)
    return env
