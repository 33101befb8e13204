"""`run_graph`: a node's upstream subgraph, compiled from studio's execution plan into Prefect
tasks in topological order.

Each upstream node is a task cached on its fingerprint (its resolved inputs and parameters):
a node that has not changed since the last run is not run again. The target node always renders
a new take; an upstream Text-to-Image node renders only when its active take is out of sync.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from studio.batch import BatchQuality, find_node, find_project
from studio.graph import execution_plan, fingerprint, node_state
from studio.nodes import NodeState
from studio.prepare import prepare_take
from studio.store import ProjectStore
from studio.tiers import Quality
from studio.workspace import Workspace
from tasks.text_to_image import take_tags, tier_task


def _by_fingerprint(context: Any, parameters: dict[str, Any]) -> str:
    return f"{parameters['project_id']}-{parameters['node_id']}-{parameters['node_fingerprint']}"


@task(name="evaluate_node", cache_key_fn=_by_fingerprint, persist_result=True,
      task_run_name="{node_id}")
def evaluate_node(project_id: str, node_id: str, node_fingerprint: str) -> str:
    """A value node (primitive, asset): its output is resolved from the manifest downstream;
    running it records that this fingerprint has been evaluated."""
    return node_fingerprint


def _render(store: ProjectStore, project_id: str, node_id: str, q: Quality) -> dict[str, Any]:
    # Reserved under this flow run, which renders it itself (the studio API's reconciler
    # leaves such a take alone).
    job = prepare_take(store, project_id, node_id, quality_requested=q, quality_used=q,
                       flow_run_id=flow_run.get_id())
    with tags(*take_tags(job)):
        return tier_task(q).with_options(cache_policy=NO_CACHE)(job)


@flow(name="run_graph", log_prints=True, persist_result=True)
def run_graph(project: str, node: str, quality: BatchQuality = BatchQuality.project
              ) -> dict[str, Any]:
    """Runs a node and whatever upstream of it changed, in topological order.

    Args:
        project: The project's name as the canvas shows it (e.g. Project Odyssey) or its id.
        node: The Text-to-Image node to render, by its shot (SHOT-010 or SHOT_010) or its id.
        quality: The tier to render at. `project` uses the project's own quality setting.
    """
    logger = get_run_logger()
    store = ProjectStore(Workspace())
    found = find_project(store, project)
    project_id = found.id
    node_id = find_node(found, node).id
    q = quality.resolve(found)
    plan = execution_plan(found, node_id)
    logger.info("plan for %s: %s", node, " -> ".join(plan))
    ran: list[str] = []
    for upstream_id in plan[:-1]:
        upstream = found.get_node(upstream_id)
        assert upstream is not None  # the plan only holds nodes of the project
        if upstream.node_type == "text_to_image":
            if node_state(store.load(project_id), upstream_id) is not NodeState.completed:
                _render(store, project_id, upstream_id, q)
                ran.append(upstream_id)
            continue
        state = evaluate_node(project_id, upstream_id, fingerprint(found, upstream_id),
                              return_state=True)
        if not state.name == "Cached":
            ran.append(upstream_id)
    result = _render(store, project_id, node_id, q)
    return {"take": result, "ran_upstream": ran, "plan": plan}
