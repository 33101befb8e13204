"""project.json: the manifest's models, loading (with migration) and atomic, locked saving."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
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
LOCK_TIMEOUT_S = 60.0


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


# --- migrations -----------------------------------------------------------------------------


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """v0 had `quality_level`, nodes with `type` and `pos: [x, y]`, shots as "SCENE/SHOT/vNN"
    strings, and edges as {"from": "node.socket", "to": "node.socket"} without ids."""
    out = {k: v for k, v in data.items() if k not in ("quality_level", "nodes", "edges")}
    if "quality_level" in data:
        out["quality"] = data["quality_level"]
    out["nodes"] = []
    for node in data.get("nodes", []):
        node = dict(node)
        if "type" in node:
            node["node_type"] = node.pop("type")
        if "pos" in node:
            x, y = node.pop("pos")
            node["position"] = {"x": x, "y": y}
        if isinstance(node.get("shot"), str):
            scene, shot, version = node["shot"].split("/")  # "SCENE_02/SHOT_015/v01"
            node["shot"] = {"scene": scene, "shot": shot, "version": version}
        out["nodes"].append(node)
    out["edges"] = []
    for i, edge in enumerate(data.get("edges", [])):
        source, source_socket = edge["from"].rsplit(".", 1)  # node ids may hold dots; sockets not
        target, target_socket = edge["to"].rsplit(".", 1)
        out["edges"].append(
            {
                "id": f"e{i + 1}",
                "source": source,
                "source_socket": source_socket,
                "target": target,
                "target_socket": target_socket,
            }
        )
    return out


# MIGRATIONS[n] turns a version-n manifest into version n + 1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a manifest of any known older schema_version up to SCHEMA_VERSION."""
    version = data.get("schema_version")
    if version is None:
        raise ValueError("schema_version is missing")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"schema_version must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than this studio understands "
            f"(up to {SCHEMA_VERSION}); open it with a newer studio"
        )
    if version < min(MIGRATIONS):
        raise ValueError(f"schema_version {version} is unknown (oldest known: {min(MIGRATIONS)})")
    while version < SCHEMA_VERSION:
        try:
            data = MIGRATIONS[version](data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(
                f"cannot migrate schema_version {version} to {version + 1}: {type(e).__name__}: {e}"
            ) from e
        version += 1
        data["schema_version"] = version
    return data


# --- reading --------------------------------------------------------------------------------


def parse_project(data: Any, source: str | None = None) -> Project:
    """Migrate and validate a decoded project.json; ManifestError lists every problem."""
    if not isinstance(data, dict):
        raise ManifestError(["the manifest must be a JSON object"], source)
    try:
        data = migrate(data)
    except ValueError as e:
        raise ManifestError([str(e)], source) from None
    try:
        return Project.model_validate(data)
    except ValidationError as e:
        raise ManifestError(_describe(e, data), source) from None


def load_project(path: Path | str) -> Project:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError([f"cannot read: {e}"], str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(
            [f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"], str(path)
        ) from None
    return parse_project(data, str(path))


def _describe(error: ValidationError, data: dict[str, Any]) -> list[str]:
    """One line per problem, naming the node/edge/asset by id rather than by list index."""
    lines = []
    for e in error.errors(include_url=False):
        where = _where(e["loc"], data)
        if e["type"] == "node_params":
            for sub in e["ctx"]["errors"]:
                field = ".".join(["params", *map(str, sub["loc"])])
                lines.append(f"{where}: {field}: {_message(sub)}")
        else:
            lines.append(f"{where}: {_message(e)}" if where else _message(e))
    return lines


def _message(e: Any) -> str:
    msg = e["msg"].removeprefix("Value error, ")
    value = e.get("input")
    if e["type"] == "missing" or not isinstance(value, str | int | float | bool):
        return msg
    shown = repr(value)
    return f"{msg} (got {shown if len(shown) <= 60 else shown[:57] + '...'})"


def _where(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    singular = {"nodes": "node", "edges": "edge", "assets": "asset"}
    parts: list[str] = []
    if len(loc) >= 2 and loc[0] in singular and isinstance(loc[1], int):
        items = data.get(loc[0])
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        label = f"{singular[loc[0]]} {loc[0]}[{loc[1]}]"
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            label = f"{singular[loc[0]]} {item['id']}"
            if loc[0] == "nodes" and isinstance(item.get("node_type"), str):
                label += f" ({item['node_type']})"
        parts.append(label)
        loc = loc[2:]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if path:
        parts.append(path)
    return ": ".join(parts)


# --- writing --------------------------------------------------------------------------------


@contextmanager
def project_lock(path: Path | str) -> Iterator[None]:
    """Hold the lock every writer of this project.json takes (a sibling `project.json.lock`)."""
    path = Path(path)
    lock = FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise ManifestError(
            [f"locked by another writer for {LOCK_TIMEOUT_S:.0f} s"], str(path)
        ) from None
    try:
        # Holding the lock, any temporary save file is a dead writer's: clear it away.
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock.release()


def dump_project(project: Project) -> str:
    """project.json's text: indented JSON, non-ASCII kept as is. pydantic's own serializer:
    `json.dumps(..., indent=2)` runs in pure Python and took 8x longer on a 1,000-take project."""
    return project.model_dump_json(indent=2) + "\n"


def write_project(path: Path | str, project: Project, text: str | None = None) -> None:
    """Atomically replace project.json; the caller holds `project_lock(path)`. `text`: the
    project already dumped (`dump_project`), when the caller has it.

    Temp file in the same folder, fsync, rename over, fsync the folder: a reader (or a crash at
    any moment) sees either the old file or the new one, never a torn one.
    """
    path = Path(path)
    text = dump_project(project) if text is None else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; other services read it too
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_project(path: Path | str, project: Project) -> None:
    """Save under the project's lock (atomic; safe against concurrent writers)."""
    with project_lock(path):
        write_project(path, project)


def now() -> datetime:
    """An aware UTC timestamp, the only kind the manifest stores."""
    return datetime.now(UTC)
