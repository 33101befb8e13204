"""The node graph: edge validation, input resolution, execution plans and staleness."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import defaultdict
from dataclasses import dataclass

from pydantic import BaseModel

from studio.manifest import Edge, Node, Project, TakeStatus
from studio.nodes import MAX_SEED, NodeState, TextToImage, TextToImageParams, node_type
from studio.params import GenerationParams, LoraRef
from studio.sockets import can_connect


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph, as a line a person can act on."""

    message: str
    nodes: tuple[str, ...] = ()  # the nodes involved, so a caller can keep only its own

    def __str__(self) -> str:
        return self.message


class GraphError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.message for p in problems))


class ResolvedTextToImage(BaseModel):
    """What a Text-to-Image node will render, with its inputs followed upstream.

    `prompt` is final: a character's trigger words and a style's prompt are already in it, so a
    runner must not add them again (the LoraRefs carry them only to say where they came from).
    """

    prompt: str
    negative_prompt: str
    seed: int | None  # None: drawn at dispatch
    steps: int
    cfg_scale: float
    width: int
    height: int
    loras: list[LoraRef]


def _node(project: Project, node_id: str) -> Node:
    node = project.get_node(node_id)
    if node is None:
        raise GraphError([Problem(f"project {project.id} has no node {node_id!r}")])
    return node


def _path(edges: list[Edge], start: str, goal: str) -> list[str] | None:
    """Node ids along edges from start to goal (depth-first), or None."""
    downstream: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        downstream[e.source].append(e.target)
    stack, came_from = [start], {start: start}
    while stack:
        current = stack.pop()
        if current == goal:
            path = [goal]
            while path[-1] != start:
                path.append(came_from[path[-1]])
            return path[::-1]
        for nxt in downstream[current]:
            if nxt not in came_from:
                came_from[nxt] = current
                stack.append(nxt)
    return None


def _edge_problems(project: Project, edge: Edge, others: list[Edge]) -> list[Problem]:
    """What is wrong with `edge` next to `others` (the edges it is checked against)."""
    where = f"edge {edge.id}"
    source, target = project.get_node(edge.source), project.get_node(edge.target)
    problems = []
    if source is None:
        problems.append(Problem(f"{where}: unknown source node {edge.source!r}", (edge.target,)))
    if target is None:
        problems.append(Problem(f"{where}: unknown target node {edge.target!r}", (edge.source,)))
    if source is None or target is None:
        return problems
    involved = (source.id, target.id)
    out = node_type(source.node_type).output(edge.source_socket)
    inp = node_type(target.node_type).input(edge.target_socket)
    if out is None:
        known = ", ".join(s.name for s in node_type(source.node_type).outputs) or "none"
        problems.append(
            Problem(
                f"{where}: node {source.id} ({source.node_type}) has no output socket "
                f"{edge.source_socket!r} (outputs: {known})",
                involved,
            )
        )
    if inp is None:
        known = ", ".join(s.name for s in node_type(target.node_type).inputs) or "none"
        problems.append(
            Problem(
                f"{where}: node {target.id} ({target.node_type}) has no input socket "
                f"{edge.target_socket!r} (inputs: {known})",
                involved,
            )
        )
    if out is None or inp is None:
        return problems
    if not can_connect(out.type, inp.type):
        problems.append(
            Problem(
                f"{where}: cannot connect {source.id}.{out.name} ({out.type}) to "
                f"{target.id}.{inp.name} ({inp.type})",
                involved,
            )
        )
    elif out.asset_kind and inp.asset_kind and out.asset_kind != inp.asset_kind:
        problems.append(
            Problem(
                f"{where}: cannot connect {source.id}.{out.name} (a {out.asset_kind} asset) to "
                f"{target.id}.{inp.name} (takes a {inp.asset_kind})",
                involved,
            )
        )
    taken = next((o for o in others if (o.target, o.target_socket) == (target.id, inp.name)), None)
    if taken is not None:
        problems.append(
            Problem(
                f"{where}: input {target.id}.{inp.name} already has edge {taken.id}; "
                "an input takes one edge",
                involved,
            )
        )
    cycle = _path(others, target.id, source.id)
    if cycle is not None:
        nodes = [source.id, *cycle]
        problems.append(Problem(f"{where}: closes a cycle {' -> '.join(nodes)}", tuple(nodes)))
    return problems


def validate_edge(project: Project, edge: Edge) -> None:
    """Refuse (GraphError) an edge that may not join the project's other edges."""
    problems = _edge_problems(project, edge, [e for e in project.edges if e.id != edge.id])
    if problems:
        raise GraphError(problems)


def validate_project(project: Project) -> list[Problem]:
    """Everything wrong with the graph; an empty list means it is valid."""
    problems = []
    # Each edge is checked against the ones before it, so a double input or a cycle is
    # reported once, at the edge that makes it.
    for i, edge in enumerate(project.edges):
        problems += _edge_problems(project, edge, project.edges[:i])
    shots: dict[str, str] = {}
    for node in project.nodes:
        kind = node_type(node.node_type)
        if kind.category == "asset":
            problems += _asset_node_problems(project, node)
        if node.shot is not None:
            other = shots.setdefault(str(node.shot), node.id)
            if other != node.id:
                problems.append(
                    Problem(
                        f"nodes {other} and {node.id} both render shot {node.shot}; "
                        "a shot version belongs to one node",
                        (other, node.id),
                    )
                )
    return problems


def _asset_node_problems(project: Project, node: Node) -> list[Problem]:
    asset_id = node.params["asset_id"]
    wanted = node_type(node.node_type).outputs[0].asset_kind
    asset = project.get_asset(asset_id)
    where = f"node {node.id} ({node.node_type})"
    if asset is None:
        return [Problem(f"{where}: asset {asset_id} is not in the project's assets", (node.id,))]
    if asset.kind != wanted:
        return [
            Problem(
                f"{where}: asset {asset_id} ({asset.name!r}) is a {asset.kind}, not a {wanted}",
                (node.id,),
            )
        ]
    return []


def execution_plan(project: Project, node_id: str) -> list[str]:
    """The node and everything upstream of it, in an order they can run (the node last)."""
    _node(project, node_id)
    upstream: dict[str, set[str]] = defaultdict(set)
    for e in project.edges:
        if project.get_node(e.source) and project.get_node(e.target):
            upstream[e.target].add(e.source)
    wanted, stack = {node_id}, [node_id]
    while stack:
        for source in upstream[stack.pop()]:
            if source not in wanted:
                wanted.add(source)
                stack.append(source)
    # Kahn's algorithm; ties keep the manifest's node order so plans are stable.
    order: list[str] = []
    pending = [n.id for n in project.nodes if n.id in wanted]
    while pending:
        ready = next((n for n in pending if not (upstream[n] - set(order))), None)
        if ready is None:
            raise GraphError(
                [Problem(f"a cycle upstream of {node_id} among {', '.join(pending)}", (node_id,))]
            )
        order.append(ready)
        pending.remove(ready)
    return order


def resolve_inputs(project: Project, node_id: str) -> ResolvedTextToImage:
    """Follow a Text-to-Image node's edges: a connected input overrides its on-node value."""
    node = _node(project, node_id)
    if node.node_type != TextToImage.name:
        raise GraphError(
            [Problem(f"node {node_id} is a {node.node_type} node, not {TextToImage.name}")]
        )
    plan = execution_plan(project, node_id)
    problems = [p for p in validate_project(project) if set(p.nodes) & set(plan)]
    if problems:
        raise GraphError(problems)

    connected = {}
    for e in project.edges:
        if e.target == node_id:
            source = _node(project, e.source)
            value = node_type(source.node_type).output_value(
                source.parsed_params(), e.source_socket
            )
            connected[e.target_socket] = value
    params = node.parsed_params()
    assert isinstance(params, TextToImageParams)
    overrides = {
        s.param: connected[s.name] for s in TextToImage.inputs if s.param and s.name in connected
    }
    params = params.model_copy(update=overrides)

    # Trigger words lead the prompt, style prompts close it; LoRAs load only where a file is set.
    loras, words, styles = [], [], []
    for socket in ("character", "style"):
        asset = project.get_asset(connected[socket]) if socket in connected else None
        if asset is None:
            continue
        words += asset.trigger_words
        styles += [asset.style_prompt] if asset.style_prompt else []
        if asset.lora_path:
            loras.append(
                LoraRef(
                    kind=asset.kind,
                    path=asset.lora_path,
                    weight=asset.lora_weight,
                    trigger_words=asset.trigger_words,
                    style_prompt=asset.style_prompt,
                )
            )
    width, height = params.size()
    return ResolvedTextToImage(
        prompt=", ".join(p for p in (*words, params.prompt, *styles) if p),
        negative_prompt=params.negative_prompt,
        seed=params.fixed_seed(),
        steps=params.steps,
        cfg_scale=params.cfg_scale,
        width=width,
        height=height,
        loras=loras,
    )


def to_generation_params(
    resolved: ResolvedTextToImage, seed: int | None = None
) -> GenerationParams:
    """The job's parameters, with a concrete seed: `seed`, else the node's, else a random one."""
    if seed is None:
        seed = resolved.seed if resolved.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return GenerationParams(**resolved.model_dump(exclude={"seed"}), seed=seed)


def fingerprint(project: Project, node_id: str) -> str:
    """sha256 of what the node would produce now, so an unchanged node need not run again.

    For a Text-to-Image node: its resolved inputs (a random seed left out, a fixed one in);
    for a value node: its type, parameters and the fingerprints of what feeds it.
    """
    node = _node(project, node_id)
    if node.node_type == TextToImage.name:
        return resolved_fingerprint(resolve_inputs(project, node_id))
    else:
        data = {
            "node_type": node.node_type,
            "params": node.params,
            "inputs": {
                e.target_socket: fingerprint(project, e.source)
                for e in project.edges
                if e.target == node_id
            },
        }
    return _digest(data)


def resolved_fingerprint(resolved: ResolvedTextToImage) -> str:
    """`fingerprint` of a Text-to-Image node already resolved (a random seed left out)."""
    data = resolved.model_dump(mode="json")
    if data["seed"] is None:
        del data["seed"]
    return _digest(data)


def _digest(data: object) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def node_state(project: Project, node_id: str) -> NodeState:
    """The state shown on the node, derived from its takes and its current fingerprint."""
    node = _node(project, node_id)
    statuses = {t.status for t in node.takes}
    if TakeStatus.generating in statuses:
        return NodeState.generating
    if TakeStatus.queued in statuses:
        return NodeState.queued
    finished = [t for t in node.takes if t.status in (TakeStatus.completed, TakeStatus.failed)]
    if finished and max(finished, key=lambda t: t.number).status == TakeStatus.failed:
        return NodeState.error
    active = node.get_take(node.active_take) if node.active_take else None
    if active is None:
        return NodeState.idle
    try:
        current = fingerprint(project, node_id)
    except GraphError:
        return NodeState.error  # it could not be generated as it stands
    return NodeState.completed if active.fingerprint == current else NodeState.out_of_sync
