"""`batch_takes`: a TD's batch of takes, run as a deployment on a tier's work pool.

The flow runs in one process, so the tier's pipeline loads once and every take reuses it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, tags
from pydantic import BaseModel, Field

from runners.gpus import apply_gpu_map
from studio.graph import node_state
from studio.jobs import prepare_take
from studio.manifest import Project
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.text_to_image import take_tags, tier_task


class NodeSelection(BaseModel):
    """Which Text-to-Image nodes to render. Empty everywhere means every node of the project."""

    scene: str | None = Field(default=None, description="only this scene, e.g. SCENE_02")
    shots: list[str] = Field(default_factory=list, description="only these shots, e.g. SHOT_015")
    node_ids: list[str] = Field(default_factory=list, description="only these node ids")


def select_nodes(project: Project, selection: NodeSelection) -> list[str]:
    chosen = []
    for node in project.nodes:
        if node.node_type != "text_to_image" or node.shot is None:
            continue
        if selection.node_ids and node.id not in selection.node_ids:
            continue
        if selection.scene and node.shot.scene != selection.scene:
            continue
        if selection.shots and node.shot.shot not in selection.shots:
            continue
        chosen.append(node.id)
    return chosen


@flow(name="batch_takes", log_prints=True, persist_result=True)
def batch_takes(
    project_id: str,
    selection: NodeSelection | None = None,
    takes_per_node: int = 1,
    seeds: list[int] | None = None,
    quality: Quality | None = None,
) -> list[dict[str, Any]]:
    """Renders `takes_per_node` takes of each selected node; seeds are used in turn, or random.

    quality: the tier to render at; the project's own quality when left empty.
    """
    if not 1 <= takes_per_node <= 100:
        raise ValueError(f"takes_per_node must be 1..100, not {takes_per_node}")
    logger = get_run_logger()
    store = ProjectStore(Workspace())
    project = store.load(project_id)
    q = Quality(quality or project.quality)
    gpu = apply_gpu_map(q)  # before the first take loads torch
    if gpu is not None:
        logger.info("rendering on %s (STUDIO_GPUS)", gpu.label())
    node_ids = select_nodes(project, selection or NodeSelection())
    if not node_ids:
        raise ValueError(f"no Text-to-Image node of {project_id} matches {selection}")
    logger.info("%s: %d node(s) x %d take(s) at quality %s",
                project_id, len(node_ids), takes_per_node, q.value)

    results = []
    render = tier_task(q)
    for node_id in node_ids:
        for i in range(takes_per_node):
            seed = seeds[i % len(seeds)] if seeds else None
            job = prepare_take(store, project_id, node_id,
                               quality_requested=q, quality_used=q, seed=seed)
            with tags(*take_tags(job)):
                results.append(render(job))
        logger.info("%s: %s", node_id, node_state(store.load(project_id), node_id).value)
    return results
