"""project.json's models: the project, its nodes, edges, assets and takes (reading and saving
the file: studio/project_file.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from studio.nodes import AssetId, AssetKind, ParamsBase, UnknownNodeType, node_type
from studio.params import GenerationParams
from studio.tiers import FallbackPolicy, Quality
from studio.workspace import PROJECT_ID_RE, check_relative

SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A project.json that cannot be read, with one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(problems) == 1:
            text = prefix + problems[0]
        else:
            text = prefix + f"{len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(text)


class _Model(BaseModel):
    # A misspelt key is a mistake to report, not data to drop silently.
    model_config = ConfigDict(extra="forbid")


class Position(_Model):
    x: float = Field(0.0, allow_inf_nan=False)
    y: float = Field(0.0, allow_inf_nan=False)


class Shot(_Model):
    scene: str = Field(pattern=r"^SCENE_\d{2,4}$", examples=["SCENE_02"])
    shot: str = Field(pattern=r"^SHOT_\d{3,4}$", examples=["SHOT_015"])
    version: str = Field(pattern=r"^v\d{2,3}$", examples=["v01"])

    def __str__(self) -> str:
        return f"{self.scene}/{self.shot}/{self.version}"


class TakeStatus(StrEnum):
    queued = "queued"
    generating = "generating"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class Take(_Model):
    id: str = Field(min_length=1)
    number: int = Field(ge=1, description="1-based per node; also in the file name")
    path: str = Field(description="relative to the project folder")
    status: TakeStatus = TakeStatus.queued
    params: dict[str, Any] = Field(description="the GenerationParams it was made with")
    fingerprint: str
    pipeline_id: str
    quality_requested: Quality
    quality_used: Quality
    task_run_id: str | None = None
    flow_run_id: str | None = None
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per phase")
    applied: dict[str, Any] = Field(
        default_factory=dict,
        description="steps/cfg_scale the tier really rendered with (the low tier clamps steps "
        "to 4 and has no CFG), and notes saying why they differ from params",
    )
    error: str | None = None
    attempts: int = Field(0, ge=0, description="how many times a worker started it (a retry "
                          "after a worker died is attempt 2)")
    hand_outs: int = Field(0, ge=0, description="how many times the gateway handed it to Prefect "
                           "again after Prefect lost it")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        check_relative(v)
        return v

    @field_validator("params")
    @classmethod
    def _generation_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Kept as a dict (the contract), but it must be a whole GenerationParams.
        return GenerationParams.model_validate(v).model_dump(mode="json")


class Node(_Model):
    id: str = Field(min_length=1)
    node_type: str
    title: str = ""
    params: dict[str, Any] = Field(
        default_factory=dict, description="validated against the node type's params model"
    )
    position: Position = Field(default_factory=Position)
    shot: Shot | None = Field(None, description="for node types with takes (text_to_image)")
    takes: list[Take] = Field(default_factory=list)
    active_take: str | None = Field(None, description="id of the completed take shown")

    @model_validator(mode="after")
    def _fits_node_type(self) -> Node:
        try:
            kind = node_type(self.node_type)
        except UnknownNodeType as e:
            raise PydanticCustomError("unknown_node_type", str(e)) from None
        try:
            self.params = kind.params_model.model_validate(self.params).model_dump(mode="json")
        except ValidationError as e:
            # Carried in ctx so each bad parameter becomes its own line (see _describe).
            raise PydanticCustomError(
                "node_params",
                "{count} invalid parameter(s)",
                {"count": e.error_count(), "errors": e.errors(include_url=False)},
            ) from None
        self.title = self.title or kind.title
        if kind.has_takes:
            self._check_takes()
        elif self.shot or self.takes or self.active_take:
            raise ValueError(f"a {self.node_type} node has no shot, takes or active_take")
        return self

    def _check_takes(self) -> None:
        if self.shot is None:
            raise ValueError(f"a {self.node_type} node needs a shot {{scene, shot, version}}")
        for attr in ("id", "number"):
            seen = [getattr(t, attr) for t in self.takes]
            if len(seen) != len(set(seen)):
                raise ValueError(f"two takes share a take {attr}")
        if self.active_take is not None and self.active_take not in {
            t.id for t in self.takes if t.status == TakeStatus.completed
        }:
            raise ValueError(f"active_take {self.active_take!r} is not a completed take")

    def parsed_params(self) -> ParamsBase:
        """The params as their node type's model (e.g. TextToImageParams)."""
        return node_type(self.node_type).params_model.model_validate(self.params)

    def get_take(self, take_id: str) -> Take | None:
        return next((t for t in self.takes if t.id == take_id), None)

    @property
    def preview(self) -> str | None:
        """The active take's path: what the node's preview area shows."""
        take = self.get_take(self.active_take) if self.active_take else None
        return take.path if take else None


class Edge(_Model):
    id: str = Field(min_length=1)
    source: str
    source_socket: str
    target: str
    target_socket: str


class Asset(_Model):
    """A generative asset (spec 1.2, AssetReference): what a runner needs to apply it."""

    id: AssetId
    kind: AssetKind
    name: str = Field(min_length=1)
    lora_path: str | None = Field(None, description="relative to the workspace root")
    lora_weight: float = Field(1.0, allow_inf_nan=False)
    trigger_words: list[str] = Field(default_factory=list)
    style_prompt: str = ""

    @field_validator("lora_path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is not None:
            check_relative(v)
        return v

    @model_validator(mode="after")
    def _complete(self) -> Asset:
        if self.kind == "character" and not self.lora_path:
            raise ValueError("a character asset needs a lora_path")
        if self.kind == "style" and not self.style_prompt:
            raise ValueError("a style asset needs a style_prompt")
        return self


class Project(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=PROJECT_ID_RE.pattern, description="its folder name under Projects/")
    name: str = Field(min_length=1)
    quality: Quality = Quality.standard
    fallback: FallbackPolicy = Field(
        FallbackPolicy.when_offline,
        description="when a click may render on a lower tier (studio.tiers.FallbackPolicy)")
    fallback_grace_seconds: float = Field(
        30.0, ge=0, le=3600, allow_inf_nan=False,
        description="how long the requested tier must have been offline before a fallback")
    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)
    assets: list[Asset] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Project:
        for what, items in (("node", self.nodes), ("edge", self.edges), ("asset", self.assets)):
            ids = [item.id for item in items]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{what} ids used twice: {', '.join(dupes)}")
        return self

    def get_node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def get_asset(self, asset_id: str) -> Asset | None:
        return next((a for a in self.assets if a.id == asset_id), None)


def new_id() -> str:
    """A new node or edge id."""
    return uuid.uuid4().hex[:12]


def new_node(
    kind: str,
    *,
    node_id: str | None = None,
    params: dict[str, Any] | None = None,
    position: Position | None = None,
    shot: Shot | None = None,
    title: str = "",
) -> Node:
    """A node of a registered type with default params (and a first shot, if it has takes)."""
    if shot is None and node_type(kind).has_takes:
        shot = Shot(scene="SCENE_01", shot="SHOT_010", version="v01")
    return Node(
        id=node_id or new_id(),
        node_type=kind,
        title=title,
        params=params or {},
        position=position or Position(),
        shot=shot,
    )


def now() -> datetime:
    """An aware UTC timestamp, the only kind the manifest stores."""
    return datetime.now(UTC)
