"""REST under /api: a project's generative assets (characters, styles) and the workspace's LoRAs.

An asset is what a Character or Style node puts on the canvas (`params.asset_id`); the runner
loads its LoRA from a path relative to the workspace root. Every change goes through
`ProjectStore.edit` (locked, validated, atomic).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from api.auth import require_token
from api.deps import Store
from studio.manifest import Asset, ManifestError, Project
from studio.nodes import AssetKind, node_type
from studio.store import ProjectNotFound, ProjectStore
from studio.workspace import LORAS, PathEscapeError, Workspace, check_relative, safe_path

router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

LORA_SUFFIX = ".safetensors"
# The FLUX runner refuses weights outside this range (runners/flux/generation.py).
LORA_WEIGHT_MIN, LORA_WEIGHT_MAX = -4.0, 4.0
MAX_TRIGGER_WORDS = 32

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Weight = Annotated[float, Field(ge=LORA_WEIGHT_MIN, le=LORA_WEIGHT_MAX, allow_inf_nan=False)]
LoraPath = Annotated[
    str | None,
    Field(
        max_length=1000,
        description=f"a .safetensors file relative to the workspace root, e.g. "
        f"{LORAS}/alex.safetensors (GET /api/loras lists them)",
        examples=[f"{LORAS}/alex.safetensors"],
    ),
]
TriggerWords = Annotated[
    list[Annotated[str, StringConstraints(max_length=200)]],
    Field(max_length=MAX_TRIGGER_WORDS, description="put before the prompt; blanks are dropped"),
]
StylePrompt = Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("trigger_words", mode="after", check_fields=False)
    @classmethod
    def _words(cls, words: list[str] | None) -> list[str] | None:
        return None if words is None else [w.strip() for w in words if w.strip()]


class AssetCreate(_In):
    kind: AssetKind
    name: Name = Field(examples=["Alex"])
    lora_path: LoraPath = None
    lora_weight: Weight = 1.0
    trigger_words: TriggerWords = Field(default_factory=list, examples=[["alexchar"]])
    style_prompt: StylePrompt = ""


class AssetPatch(_In):
    """Only the fields sent change; `lora_path: null` removes a style's LoRA."""

    name: Name | None = None
    lora_path: LoraPath = None
    lora_weight: Weight | None = None
    trigger_words: TriggerWords | None = None
    style_prompt: StylePrompt | None = None


class LoraFile(BaseModel):
    path: str = Field(description="relative to the workspace root; what an asset's lora_path holds")
    size: int = Field(description="bytes")


# --- helpers --------------------------------------------------------------------------------


def _where_loras_go(workspace: Workspace) -> str:
    return (f"LoRA files go in {LORAS}/ of the workspace ({workspace.loras_dir}); "
            "GET /api/loras lists them")


def checked_lora_path(workspace: Workspace, rel: str) -> str:
    """The LoRA path as stored (normalized), or a 422 naming it and where LoRAs go."""
    def refuse(why: str) -> HTTPException:
        return HTTPException(422, f"lora_path {rel!r} {why}; {_where_loras_go(workspace)}")

    try:
        normalized = str(check_relative(rel))
        file = safe_path(workspace.root, normalized)
    except PathEscapeError:
        raise refuse("must be relative to the workspace root and stay inside it") from None
    if PurePosixPath(normalized).suffix.lower() != LORA_SUFFIX:
        raise refuse(f"is not a {LORA_SUFFIX} file")
    try:
        exists = file.is_file()
    except OSError as exc:  # a name too long for the file system, say
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if not exists:
        raise refuse("does not exist")
    return normalized


def _project_exists(store: ProjectStore, project_id: str) -> None:
    """404 for an unknown project before a body is judged against the disk."""
    if not store.manifest_path(project_id).is_file():
        raise ProjectNotFound(f"project {project_id!r} does not exist")


def _asset(project: Project, asset_id: str) -> Asset:
    asset = project.get_asset(asset_id)
    if asset is None:
        raise HTTPException(404, f"asset {asset_id!r} does not exist in project {project.id}")
    return asset


def _complete(fields: dict[str, object], what: str) -> Asset:
    """An Asset from its fields, or a 422 with one line per problem (a style with no prompt)."""
    try:
        return Asset.model_validate(fields)
    except ValidationError as exc:
        lines = []
        for e in exc.errors(include_url=False):
            where = ".".join(map(str, e["loc"]))
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
        raise ManifestError(lines, what) from None


def _refuse_same_name(project: Project, asset: Asset) -> None:
    """Two assets of a kind with one name could not be told apart in the palette."""
    twin = next((a for a in project.assets if a.id != asset.id and a.kind == asset.kind
                 and a.name.casefold() == asset.name.casefold()), None)
    if twin is not None:
        raise HTTPException(409, f"project {project.id} already has a {asset.kind} named "
                            f"{twin.name!r} (asset {twin.id})")


def _users(project: Project, asset_id: str) -> list[str]:
    """The asset nodes that put this asset on the canvas, as `id ("title")`."""
    return [f'{n.id} ("{n.title}")' for n in project.nodes
            if node_type(n.node_type).category == "asset" and n.params.get("asset_id") == asset_id]


# --- assets ---------------------------------------------------------------------------------


@router.get("/projects/{project_id}/assets", response_model=list[Asset])
def list_assets(project_id: str, store: Store) -> list[Asset]:
    return store.load(project_id).assets


@router.post("/projects/{project_id}/assets", status_code=201, response_model=Asset)
def create_asset(project_id: str, body: AssetCreate, store: Store) -> Asset:
    _project_exists(store, project_id)
    fields = body.model_dump()
    if body.lora_path is not None:
        fields["lora_path"] = checked_lora_path(store.workspace, body.lora_path)
    asset = _complete({**fields, "id": str(uuid.uuid4())}, f"new {body.kind} asset")
    with store.edit(project_id) as project:
        _refuse_same_name(project, asset)
        project.assets.append(asset)
    return asset


@router.get("/projects/{project_id}/assets/{asset_id}", response_model=Asset)
def read_asset(project_id: str, asset_id: str, store: Store) -> Asset:
    return _asset(store.load(project_id), asset_id)


@router.patch("/projects/{project_id}/assets/{asset_id}", response_model=Asset)
def update_asset(project_id: str, asset_id: str, body: AssetPatch, store: Store) -> Asset:
    patch = body.model_dump(include=body.model_fields_set)
    # Only lora_path may be set to null (a style without a LoRA); other nulls mean "unchanged".
    patch = {k: v for k, v in patch.items() if v is not None or k == "lora_path"}
    _project_exists(store, project_id)
    if patch.get("lora_path") is not None:
        patch["lora_path"] = checked_lora_path(store.workspace, patch["lora_path"])
    with store.edit(project_id) as project:
        current = _asset(project, asset_id)
        asset = _complete({**current.model_dump(), **patch}, f"asset {asset_id}")
        _refuse_same_name(project, asset)
        project.assets[project.assets.index(current)] = asset
    return asset


@router.delete("/projects/{project_id}/assets/{asset_id}", status_code=204)
def delete_asset(project_id: str, asset_id: str, store: Store) -> Response:
    with store.edit(project_id) as project:
        asset = _asset(project, asset_id)
        users = _users(project, asset_id)
        if users:
            raise HTTPException(409, f"{asset.kind} {asset.name!r} is still used by node"
                                f"{'s' if len(users) > 1 else ''} {', '.join(users)}; "
                                "delete those nodes first")
        project.assets.remove(asset)
    return Response(status_code=204)


# --- the workspace's LoRA files -------------------------------------------------------------


@router.get("/loras", response_model=list[LoraFile])
def list_loras(store: Store) -> list[LoraFile]:
    """Every .safetensors file under <workspace>/Library/LoRAs/, for the canvas's LoRA picker."""
    root = store.workspace.root
    found: list[LoraFile] = []
    for folder, dirs, files in os.walk(store.workspace.loras_dir):
        dirs.sort()
        for name in files:
            if not name.lower().endswith(LORA_SUFFIX):
                continue
            rel = (Path(folder) / name).relative_to(root).as_posix()
            try:
                file = safe_path(root, rel)  # a symlink out of the workspace is not offered
                if file.is_file():
                    found.append(LoraFile(path=rel, size=file.stat().st_size))
            except (PathEscapeError, OSError):
                continue
    return sorted(found, key=lambda f: f.path.casefold())
