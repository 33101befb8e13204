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

from studio.graph import execution_plan, fingerprint, node_state
from studio.jobs import prepare_take
from studio.nodes import NodeState
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
    job = prepare_take(store, project_id, node_id, quality_requested=q, quality_used=q)
    with tags(*take_tags(job)):
        return tier_task(q).with_options(cache_policy=NO_CACHE)(job)


@flow(name="run_graph", log_prints=True, persist_result=True)
def run_graph(project_id: str, node_id: str, quality: Quality | None = None) -> dict[str, Any]:
    """Runs `node_id` and whatever upstream of it changed, in topological order."""
    logger = get_run_logger()
    store = ProjectStore(Workspace())
    project = store.load(project_id)
    q = Quality(quality or project.quality)
    plan = execution_plan(project, node_id)
    logger.info("plan for %s: %s", node_id, " -> ".join(plan))
    ran: list[str] = []
    for upstream_id in plan[:-1]:
        node = project.get_node(upstream_id)
        assert node is not None  # the plan only holds nodes of the project
        if node.node_type == "text_to_image":
            if node_state(store.load(project_id), upstream_id) is not NodeState.completed:
                _render(store, project_id, upstream_id, q)
                ran.append(upstream_id)
            continue
        state = evaluate_node(project_id, upstream_id, fingerprint(project, upstream_id),
                              return_state=True)
        if not state.name == "Cached":
            ran.append(upstream_id)
    result = _render(store, project_id, node_id, q)
    return {"take": result, "ran_upstream": ran, "plan": plan}
