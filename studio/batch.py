"""A TD's batch in the words TDs use: projects by name, shots as `SHOT-015`, seeds, sweeps.

No Prefect here: the flows turn these into takes; the rules (which project, which nodes, which
seed for which take, which cells a sweep has) are the domain's.
"""

from __future__ import annotations

import itertools
import re
import secrets
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from studio.manifest import Node, Project
from studio.nodes import MAX_SEED
from studio.store import ProjectNotFound, ProjectStore
from studio.tiers import Quality

_SHOT_RE = re.compile(r"^SHOT[-_ ]?(\d{1,4})$", re.IGNORECASE)
_SCENE_RE = re.compile(r"^SCENE[-_ ]?(\d{1,4})$", re.IGNORECASE)


class BatchError(ValueError):
    """Bad batch input, worded for the person who filled in the run form."""


class BatchQuality(StrEnum):
    """The tier a batch renders at; `project` follows the project's own quality setting."""

    project = "project"
    low = "low"
    standard = "standard"
    high = "high"

    def resolve(self, project: Project) -> Quality:
        return project.quality if self is BatchQuality.project else Quality(self.value)


class Sweep(BaseModel):
    """A look-development grid over one node: every combination of the lists given.

    Leave `shot` empty for no sweep. An empty list keeps the node's own value on that axis.
    """

    model_config = ConfigDict(extra="forbid")

    shot: str = Field("", title="Shot",
                      description="The node to sweep, by its shot: SHOT-010 (or SHOT_010). "
                      "Empty: no sweep.")
    seeds: list[int] = Field(default_factory=list, title="Seeds",
                             description="Seeds, e.g. [1, 2, 3].")
    cfg_scales: list[float] = Field(default_factory=list, title="CFG scales",
                                    description="CFG scales, e.g. [2.5, 3.5, 5].")
    steps: list[int] = Field(default_factory=list, title="Steps",
                             description="Step counts, e.g. [12, 20, 28].")
    prompts: list[str] = Field(default_factory=list, title="Prompts",
                               description="Prompts to try instead of the node's.")

    @property
    def active(self) -> bool:
        return bool(self.shot.strip())

    def axes(self) -> list[tuple[str, list[Any]]]:
        """The axes with values, in a fixed order: columns first, then rows."""
        named = [("seed", self.seeds), ("cfg_scale", self.cfg_scales), ("steps", self.steps),
                 ("prompt", self.prompts)]
        return [(name, list(values)) for name, values in named if values]

    def cells(self) -> list[dict[str, Any]]:
        """Every combination, row by row: the first axis varies fastest (the columns)."""
        axes = self.axes()
        if not axes:
            raise BatchError("a sweep needs at least one list of seeds, cfg_scales, steps or "
                             "prompts")
        names = [name for name, _ in axes]
        # product() varies the last axis fastest; reversed so the first axis is the columns.
        combos = itertools.product(*(values for _, values in reversed(axes)))
        return [dict(zip(reversed(names), combo, strict=True)) for combo in combos]


def shot_name(text: str) -> str:
    """`SHOT-015`, `shot_15`, `SHOT 015` -> `SHOT_015` (the manifest's form)."""
    match = _SHOT_RE.fullmatch(text.strip())
    if not match:
        raise BatchError(f"{text!r} is not a shot; write it as SHOT-015 (or SHOT_015)")
    return f"SHOT_{int(match.group(1)):03d}"


def scene_name(text: str) -> str:
    """`SCENE-02`, `scene_2` -> `SCENE_02`."""
    match = _SCENE_RE.fullmatch(text.strip())
    if not match:
        raise BatchError(f"{text!r} is not a scene; write it as SCENE-02 (or SCENE_02)")
    return f"SCENE_{int(match.group(1)):02d}"


def display_shot(shot: str) -> str:
    """`SHOT_015` -> `SHOT-015`, as the take files and the Prefect UI name it."""
    return shot.replace("SHOT_", "SHOT-")


def find_project(store: ProjectStore, name_or_id: str) -> Project:
    """A project by its id or its display name (case-insensitive); the error lists them all."""
    wanted = name_or_id.strip()
    projects = store.list()
    for project in projects:
        if wanted == project.id:
            return project
    named = [p for p in projects if p.name.casefold() == wanted.casefold()]
    if len(named) == 1:
        return named[0]
    known = ", ".join(f"{p.name!r} (id {p.id})" for p in projects) or "none yet"
    if named:
        raise BatchError(f"several projects are named {wanted!r}; use the id: {known}")
    raise ProjectNotFound(f"no project {wanted!r}; known projects: {known}")


def _node_label(node: Node) -> str:
    assert node.shot is not None
    return f"{node.shot.scene}/{display_shot(node.shot.shot)}"


def select_nodes(project: Project, scene: str = "", shots: list[str] | None = None) -> list[Node]:
    """The project's Text-to-Image nodes in this scene and these shots (empty: all of them)."""
    scene_filter = scene_name(scene) if scene.strip() else None
    shot_filter = {shot_name(s) for s in shots or [] if s.strip()}
    candidates = [n for n in project.nodes if n.node_type == "text_to_image" and n.shot]
    chosen = [n for n in candidates
              if (scene_filter is None or n.shot and n.shot.scene == scene_filter)
              and (not shot_filter or n.shot and n.shot.shot in shot_filter)]
    if not chosen:
        have = ", ".join(sorted({_node_label(n) for n in candidates})) or "none"
        wanted = " ".join(filter(None, [scene_filter, ", ".join(sorted(shot_filter))]))
        raise BatchError(f"no Text-to-Image node of {project.name!r} matches {wanted or 'any'}; "
                         f"its shots: {have}")
    return chosen


def sweep_node(project: Project, sweep: Sweep) -> Node:
    """The one node a sweep varies: the project's Text-to-Image node of that shot."""
    wanted = shot_name(sweep.shot)
    nodes = [n for n in project.nodes
             if n.node_type == "text_to_image" and n.shot and n.shot.shot == wanted]
    if len(nodes) != 1:
        have = ", ".join(sorted(_node_label(n) for n in project.nodes
                                if n.node_type == "text_to_image" and n.shot)) or "none"
        what = "no" if not nodes else "more than one"
        raise BatchError(f"{what} Text-to-Image node of {project.name!r} is shot "
                         f"{display_shot(wanted)}; its shots: {have}")
    return nodes[0]


def take_seeds(count: int, seeds: list[int]) -> list[int]:
    """`count` seeds: the listed ones in turn, else a distinct random seed per take."""
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise BatchError(f"seed {seed} is outside 0..{MAX_SEED}")
    if seeds:
        return [seeds[i % len(seeds)] for i in range(count)]
    chosen: list[int] = []
    while len(chosen) < count:
        seed = secrets.randbelow(2**32)
        if seed not in chosen:  # "random per take": no two takes of a batch repeat
            chosen.append(seed)
    return chosen


def find_node(project: Project, shot_or_id: str) -> Node:
    """A Text-to-Image node by its shot (SHOT-010) or, as the canvas API knows it, its id."""
    wanted = shot_or_id.strip()
    by_id = project.get_node(wanted)
    if by_id is not None:
        return by_id
    return sweep_node(project, Sweep(shot=wanted))
