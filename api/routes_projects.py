"""REST under /api: projects, nodes, edges, takes, node types and the project's files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import FileResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from api.deps import Store
from api.file_tokens import require_token_or_file_signature
from api.messages import protocol_schema
from api.views import IN_FLIGHT
from studio.graph import node_state, validate_edge
from studio.manifest import (
    Asset,
    Edge,
    ManifestError,
    Node,
    Position,
    Project,
    Shot,
    Take,
    new_id,
    new_node,
)
from studio.nodes import NodeState, node_type, node_types_schema
from studio.takes import set_active_take
from studio.tiers import FallbackPolicy, Quality
from studio.workspace import MAX_NAME_CHARS, check_project_name, safe_path

# The file route also opens to a per-file signed link (the Prefect UI's images).
router = APIRouter(prefix="/api", dependencies=[Depends(require_token_or_file_signature)])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- bodies ---------------------------------------------------------------------------------


# Letters of any script, digits, spaces, '-' and '_' (studio.workspace.check_project_name).
ProjectName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS,
                                   examples=["Project Odyssey", "東京の夜"]),
                        AfterValidator(check_project_name)]


class ProjectCreate(_In):
    name: ProjectName = Field(description="shown as is; the project's id (its folder name) "
                              "is derived from it (ASCII) and returned")
    quality: Quality = Quality.standard


class ProjectPatch(_In):
    name: ProjectName | None = Field(None, description="renames; the id and folder stay")
    quality: Quality | None = None
    fallback: FallbackPolicy | None = None
    fallback_grace_seconds: float | None = Field(None, ge=0, le=3600, allow_inf_nan=False)


class NodeCreate(_In):
    node_type: str = Field(examples=["text_to_image"])
    title: str = Field("", max_length=200)
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="missing ones take the node type's defaults")
    shot: Shot | None = Field(None, description="for node types with takes; a free one if absent")
    position: Position | None = None


class NodePatch(_In):
    title: str | None = Field(None, max_length=200)
    params: dict[str, Any] | None = Field(None, description="merged key by key into the params")
    shot: Shot | None = None
    position: Position | None = None


class EdgeCreate(_In):
    source: str = Field(min_length=1)
    source_socket: str = Field(min_length=1)
    target: str = Field(min_length=1)
    target_socket: str = Field(min_length=1)


class ActiveTake(_In):
    take_id: str = Field(min_length=1)


# --- responses ------------------------------------------------------------------------------


class TakeOut(Take):
    url: str = Field(description="where the image is served (the files route)")
    active: bool


class NodeOut(BaseModel):
    id: str
    node_type: str
    title: str
    params: dict[str, Any]
    position: Position
    shot: Shot | None
    takes: list[TakeOut]
    active_take: str | None
    state: NodeState = Field(description="derived from the takes (studio.graph.node_state)")
    preview_path: str | None = Field(description="the active take's image, relative to the project")


class ProjectOut(BaseModel):
    schema_version: int
    id: str
    name: str
    quality: Quality
    fallback: FallbackPolicy
    fallback_grace_seconds: float
    nodes: list[NodeOut]
    edges: list[Edge]
    assets: list[Asset]


class ProjectSummary(BaseModel):
    id: str
    name: str
    quality: Quality
    nodes: int


def file_url(project_id: str, rel: str) -> str:
    return f"/api/projects/{project_id}/files/{rel}"


def take_out(project_id: str, node: Node, take: Take) -> TakeOut:
    return TakeOut(**take.model_dump(), url=file_url(project_id, take.path),
                   active=take.id == node.active_take)


def node_out(project: Project, node: Node) -> NodeOut:
    return NodeOut(
        id=node.id, node_type=node.node_type, title=node.title, params=node.params,
        position=node.position, shot=node.shot,
        takes=[take_out(project.id, node, t) for t in node.takes],
        active_take=node.active_take, state=node_state(project, node.id),
        preview_path=node.preview,
    )


def project_out(project: Project) -> ProjectOut:
    return ProjectOut(
        schema_version=project.schema_version, id=project.id, name=project.name,
        quality=project.quality, fallback=project.fallback,
        fallback_grace_seconds=project.fallback_grace_seconds,
        nodes=[node_out(project, n) for n in project.nodes],
        edges=project.edges, assets=project.assets,
    )


# --- helpers --------------------------------------------------------------------------------


def _node(project: Project, node_id: str) -> Node:
    node = project.get_node(node_id)
    if node is None:
        raise HTTPException(404, f"node {node_id!r} does not exist in project {project.id}")
    return node


def _free_shot(project: Project) -> Shot:
    """The first SCENE_01 shot (SHOT_010, SHOT_020, ...) no node renders yet."""
    used = {str(n.shot) for n in project.nodes if n.shot is not None}
    n = 10
    while str(shot := Shot(scene="SCENE_01", shot=f"SHOT_{n:03d}", version="v01")) in used:
        n += 10
    return shot


def _problems(error: ValidationError) -> list[str]:
    """One line per problem of a node that does not fit its type (params named one by one)."""
    lines = []
    for e in error.errors(include_url=False):
        if e["type"] == "node_params":
            for sub in e["ctx"]["errors"]:
                field = ".".join(["params", *map(str, sub["loc"])])
                lines.append(f"{field}: {sub['msg']}")
        else:
            where = ".".join(map(str, e["loc"]))
            lines.append(f"{where}: {e['msg']}" if where else e["msg"].removeprefix(
                "Value error, "))
    return lines


# --- projects -------------------------------------------------------------------------------


@router.post("/projects", status_code=201, response_model=ProjectOut)
def create_project(body: ProjectCreate, store: Store) -> ProjectOut:
    try:
        project = store.create(body.name, body.quality)
    except ValueError as exc:  # a name with nothing to make an id from
        raise HTTPException(422, str(exc)) from None
    return project_out(project)


@router.get("/projects", response_model=list[ProjectSummary])
def list_projects(store: Store) -> list[ProjectSummary]:
    return [ProjectSummary(id=p.id, name=p.name, quality=p.quality, nodes=len(p.nodes))
            for p in store.list()]


@router.get("/projects/{project_id}", response_model=ProjectOut)
def read_project(project_id: str, store: Store) -> ProjectOut:
    return project_out(store.load(project_id))


@router.patch("/projects/{project_id}", response_model=ProjectOut)
def update_project(project_id: str, body: ProjectPatch, store: Store) -> ProjectOut:
    with store.edit(project_id) as project:
        if body.name is not None:
            project.name = body.name
        if body.quality is not None:
            project.quality = body.quality
        if body.fallback is not None:
            project.fallback = body.fallback
        if body.fallback_grace_seconds is not None:
            project.fallback_grace_seconds = body.fallback_grace_seconds
    return project_out(store.load(project_id))


# --- nodes ----------------------------------------------------------------------------------


@router.post("/projects/{project_id}/nodes", status_code=201, response_model=NodeOut)
def add_node(project_id: str, body: NodeCreate, store: Store) -> NodeOut:
    kind = node_type(body.node_type)  # UnknownNodeType -> 422
    with store.edit(project_id) as project:
        shot = body.shot or (_free_shot(project) if kind.has_takes else None)
        try:
            node = new_node(body.node_type, params=body.params, position=body.position,
                            shot=shot, title=body.title)
        except ValidationError as exc:
            raise ManifestError(_problems(exc), f"new {body.node_type} node") from None
        project.nodes.append(node)
    project = store.load(project_id)
    return node_out(project, _node(project, node.id))


@router.get("/projects/{project_id}/nodes/{node_id}", response_model=NodeOut)
def read_node(project_id: str, node_id: str, store: Store) -> NodeOut:
    project = store.load(project_id)
    return node_out(project, _node(project, node_id))


@router.patch("/projects/{project_id}/nodes/{node_id}", response_model=NodeOut)
def update_node(project_id: str, node_id: str, body: NodePatch, store: Store) -> NodeOut:
    with store.edit(project_id) as project:
        node = _node(project, node_id)
        if body.title is not None:
            node.title = body.title
        if body.params is not None:
            node.params = {**node.params, **body.params}
        if body.shot is not None:
            node.shot = body.shot
        if body.position is not None:
            node.position = body.position
    project = store.load(project_id)
    return node_out(project, _node(project, node_id))


@router.delete("/projects/{project_id}/nodes/{node_id}", status_code=204)
def delete_node(project_id: str, node_id: str, store: Store) -> Response:
    with store.edit(project_id) as project:
        node = _node(project, node_id)
        busy = [t.number for t in node.takes if t.status in IN_FLIGHT]
        if busy:
            raise HTTPException(409, f"node {node_id} has takes in flight ({busy}); "
                                "delete it once they end")
        project.nodes.remove(node)
        project.edges = [e for e in project.edges if node_id not in (e.source, e.target)]
    return Response(status_code=204)


# --- edges ----------------------------------------------------------------------------------


@router.post("/projects/{project_id}/edges", status_code=201, response_model=Edge)
def add_edge(project_id: str, body: EdgeCreate, store: Store) -> Edge:
    with store.edit(project_id) as project:
        edge = Edge(id=new_id(), **body.model_dump())
        validate_edge(project, edge)  # GraphError -> 422, naming the two types or the cycle
        project.edges.append(edge)
    return edge


@router.delete("/projects/{project_id}/edges/{edge_id}", status_code=204)
def delete_edge(project_id: str, edge_id: str, store: Store) -> Response:
    with store.edit(project_id) as project:
        edge = next((e for e in project.edges if e.id == edge_id), None)
        if edge is None:
            raise HTTPException(404, f"edge {edge_id!r} does not exist in project {project_id}")
        project.edges.remove(edge)
    return Response(status_code=204)


# --- takes ----------------------------------------------------------------------------------


@router.get("/projects/{project_id}/nodes/{node_id}/takes", response_model=list[TakeOut])
def list_takes(project_id: str, node_id: str, store: Store) -> list[TakeOut]:
    project = store.load(project_id)
    node = _node(project, node_id)
    return [take_out(project_id, node, t) for t in sorted(node.takes, key=lambda t: t.number)]


@router.put("/projects/{project_id}/nodes/{node_id}/active-take", response_model=NodeOut)
def choose_active_take(project_id: str, node_id: str, body: ActiveTake, store: Store) -> NodeOut:
    node = _node(store.load(project_id), node_id)
    if node.get_take(body.take_id) is None:
        raise HTTPException(404, f"node {node_id} has no take {body.take_id!r}")
    set_active_take(store, project_id, node_id, body.take_id)  # TakeError (not completed) -> 409
    project = store.load(project_id)
    return node_out(project, _node(project, node_id))


# --- the rest -------------------------------------------------------------------------------


@router.get("/node-types")
def node_types() -> dict[str, Any]:
    """Every node type: header, typed sockets, params JSON Schema, on-node controls."""
    return node_types_schema()


@router.get("/ws-protocol")
def ws_protocol() -> dict[str, Any]:
    """JSON Schema of every WebSocket message payload (see docs/api.md)."""
    return protocol_schema()


@router.get("/projects/{project_id}/files/{path:path}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}}})
def project_file(project_id: str, path: str, store: Store) -> FileResponse:
    """A file of the project (renders, previews), read-only; never one outside it."""
    folder = store.existing_dir(project_id)  # ProjectNotFound (also: linked outside) -> 404
    target: Path = safe_path(folder, path)  # PathEscapeError -> 400
    try:
        exists = target.is_file()
    except OSError:  # a name too long for the file system, say: it cannot exist
        exists = False
    if not exists:
        raise HTTPException(404, f"{path[:200]!r} does not exist in project {project_id}")
    # Served as data, never as a page of the studio's origin (an .html or .svg someone put in
    # the project would otherwise run script that can drive the API).
    return FileResponse(target, headers={
        "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'"})

