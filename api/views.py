"""Server messages built from project.json: node states, the on-connect snapshot, and the result
of a take read back from the manifest (when its event was missed)."""

from __future__ import annotations

from collections.abc import Callable

from api.hub import Message
from api.messages import (
    NodeStateUpdated,
    QueuePlace,
    TakeResult,
    TaskFailed,
    TaskSuccess,
    server_message,
)
from studio.graph import node_state
from studio.manifest import Project, Take, TakeStatus
from studio.nodes import NodeState

IN_FLIGHT = (TakeStatus.queued, TakeStatus.generating)


def state_of(project: Project | None, node_id: str) -> NodeState | None:
    """The node's derived state, or None when the node (or project) is gone."""
    if project is None or project.get_node(node_id) is None:
        return None
    return node_state(project, node_id)


def node_state_message(project: Project | None, node_id: str, *, take_id: str | None = None,
                       task_id: str | None = None,
                       state: NodeState | None = None, queue: QueuePlace | None = None,
                       attempt: int | None = None) -> list[Message]:
    state = state or state_of(project, node_id)
    if state is None:
        return []
    return [server_message(NodeStateUpdated(node_id=node_id, state=state, take_id=take_id,
                                            task_id=task_id, queue=queue, attempt=attempt))]


def in_flight_takes(project: Project) -> list[tuple[str, Take]]:
    return [(n.id, t) for n in project.nodes for t in n.takes if t.status in IN_FLIGHT]


def snapshot(project: Project,
             place_of: Callable[[Take], QueuePlace | None] | None = None) -> list[Message]:
    """What a socket gets on connect: the state of every node with a take in flight, and the
    place of each queued take in its tier's queue."""
    nodes = dict.fromkeys(node_id for node_id, _ in in_flight_takes(project))
    messages = [m for node_id in nodes for m in node_state_message(project, node_id)]
    for node_id, take in in_flight_takes(project):
        place = place_of(take) if place_of and take.status == TakeStatus.queued else None
        if place is not None:
            messages += node_state_message(project, node_id, take_id=take.id,
                                           task_id=take.task_run_id, queue=place)
    return messages


def success_message(node_id: str, *, take_id: str, task_id: str | None, output_path: str,
                    take_number: int) -> Message:
    return server_message(TaskSuccess(
        task_id=task_id or "",
        node_id=node_id,
        result=TakeResult(output_path=output_path, take_number=take_number, take_id=take_id),
    ))


def failed_message(node_id: str, error: str, *, take_id: str | None,
                   task_id: str | None) -> Message:
    return server_message(TaskFailed(task_id=task_id, node_id=node_id, take_id=take_id,
                                     error=error))
