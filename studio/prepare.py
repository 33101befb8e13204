"""The use case "prepare a take": resolve a Text-to-Image node and reserve its next take, in one
locked edit of project.json, so a click reads the manifest once.

It sits above the value types (params, jobs, manifest) and the take transitions (takes), which
never import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from studio.graph import resolve_inputs, resolved_fingerprint, to_generation_params
from studio.jobs import TakeJob
from studio.manifest import Project
from studio.params import GenerationParams
from studio.store import ProjectStore
from studio.takes import reserve
from studio.tiers import TIERS, Quality


def prepare_in(
    project: Project,
    project_dir: Path,
    node_id: str,
    *,
    quality_requested: Quality,
    quality_used: Quality,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    flow_run_id: str | None = None,
) -> TakeJob:
    """Resolve the node in `project` (being edited under its lock) and reserve its next take.

    The parameters are checked whole (GenerationParams.check) before anything is reserved: a
    render the runner would refuse is refused here, and no take is recorded. `overrides` (a
    sweep's cell: prompt, steps, cfg_scale) replace the node's values for this take only.
    """
    resolved = resolve_inputs(project, node_id)
    params = to_generation_params(resolved, seed)
    node_fingerprint = resolved_fingerprint(resolved)
    if overrides:
        params = GenerationParams.model_validate({**params.model_dump(), **overrides})
        # Not the node's own settings: the take must not read as in sync with the node.
        extra = json.dumps(overrides, sort_keys=True)
        node_fingerprint = hashlib.sha256(f"{node_fingerprint}:{extra}".encode()).hexdigest()
    params.check()
    return reserve(
        project, project_dir, node_id,
        quality_requested=quality_requested,
        quality_used=quality_used,
        pipeline_id=TIERS[quality_used].pipeline_id,
        params=params,
        fingerprint=node_fingerprint,
        flow_run_id=flow_run_id,
    )


def prepare_take(
    store: ProjectStore,
    project_id: str,
    node_id: str,
    *,
    quality_requested: Quality,
    quality_used: Quality,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    flow_run_id: str | None = None,
) -> TakeJob:
    """`prepare_in` in its own locked edit: the job a tier task runs. The output path comes from
    the take allocation, never from a client. `flow_run_id`: the batch run that renders the take
    itself (the studio API's reconciler leaves such a take to it)."""
    with store.edit(project_id) as project:
        job = prepare_in(project, store.project_dir(project_id), node_id,
                         quality_requested=quality_requested, quality_used=quality_used,
                         seed=seed, overrides=overrides, flow_run_id=flow_run_id)
    return job
