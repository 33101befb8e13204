"""Sample projects and takes the tests share (imported by test modules; no tests here)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from studio.manifest import Asset, Edge, Project, Shot, Take, TakeStatus, new_node, now
from studio.project_file import save_project
from studio.store import ProjectStore
from studio.workspace import Workspace

CHARACTER_ID = "5d1d5b0e-2f0c-4c51-9d43-6a8f0e1a0001"
STYLE_ID = "5d1d5b0e-2f0c-4c51-9d43-6a8f0e1a0002"


def odyssey() -> Project:
    """Two strings, a character and a style wired into one Text-to-Image node (5 nodes, 4 edges)."""
    return Project(
        id="Project_Odyssey",
        name="Project Odyssey",
        nodes=[
            new_node("string", node_id="prompt", params={"value": "a lone astronaut, red desert"}),
            new_node("string", node_id="negative", params={"value": "cartoon"}),
            new_node("character", node_id="alex", params={"asset_id": CHARACTER_ID}),
            new_node("style", node_id="noir", params={"asset_id": STYLE_ID}),
            new_node(
                "text_to_image",
                node_id="shot15",
                params={"prompt": "typed on the node", "seed": 42},
                shot=Shot(scene="SCENE_02", shot="SHOT_015", version="v01"),
            ),
        ],
        edges=[
            Edge(
                id="e1",
                source="prompt",
                source_socket="value",
                target="shot15",
                target_socket="prompt",
            ),
            Edge(
                id="e2",
                source="negative",
                source_socket="value",
                target="shot15",
                target_socket="negative_prompt",
            ),
            Edge(
                id="e3",
                source="alex",
                source_socket="asset",
                target="shot15",
                target_socket="character",
            ),
            Edge(
                id="e4",
                source="noir",
                source_socket="asset",
                target="shot15",
                target_socket="style",
            ),
        ],
        assets=[
            Asset(
                id=CHARACTER_ID,
                kind="character",
                name="Alex",
                lora_path="Library/LoRAs/alex.safetensors",
                lora_weight=0.8,
                trigger_words=["alexchar"],
            ),
            Asset(id=STYLE_ID, kind="style", name="Noir", style_prompt="film noir, high contrast"),
        ],
    )


def add_take(
    project: Project,
    node_id: str,
    status: TakeStatus = TakeStatus.completed,
    fingerprint: str = "f" * 64,
) -> Take:
    """Append a take (as if rendered) to a node; completed takes become active."""
    node = project.get_node(node_id)
    assert node is not None and node.shot is not None
    number = len(node.takes) + 1
    take = Take(
        id=str(uuid.uuid4()),
        number=number,
        path=f"03_Renders/{node.shot.scene}/{node.shot.shot}/take{number:02d}.png",
        status=status,
        params={
            "prompt": "p",
            "seed": 1,
            "steps": 28,
            "cfg_scale": 3.5,
            "width": 1024,
            "height": 1024,
        },
        fingerprint=fingerprint,
        pipeline_id="flux-dev-fp8",
        quality_requested="standard",
        quality_used="standard",
        created_at=now(),
    )
    node.takes.append(take)
    if status == TakeStatus.completed:
        node.active_take = take.id
    return take


def stored(root: Path, project: Project, store: ProjectStore | None = None) -> ProjectStore:
    """`project` saved in a workspace at `root`; the store that reads it."""
    store = store or ProjectStore(Workspace(root))
    store.project_dir(project.id).mkdir(parents=True)
    save_project(store.manifest_path(project.id), project)
    return store


class CountingStore(ProjectStore):
    """A real store that counts how often project.json is read (each load and each edit)."""

    def __init__(self, workspace: Workspace) -> None:
        super().__init__(workspace)
        self.reads = 0

    def load(self, project_id: str) -> Project:
        self.reads += 1
        return super().load(project_id)


class RecordingSocket:
    """The browser's end of a WebSocket as the hub sees it: what was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def send_json(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code
