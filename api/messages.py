"""The WebSocket protocol of /ws/{project_id} (spec 5.1), as pydantic models.

Every frame is one JSON object `{"type": "...", "payload": {...}}`. The models are the single
source of the protocol: the server builds every message through them, and `protocol_schema()`
derives the JSON Schema that docs/api.md and the canvas code against.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from studio.nodes import NodeState
from studio.tiers import Quality

NodeId = Annotated[str, Field(min_length=1, max_length=200, examples=["a1b2c3d4e5f6"])]
TaskId = Annotated[str, Field(description="the Prefect task run id of the take",
                              examples=["0b7e5c9a-3f6e-4a51-9d0c-2f1c4f7f9d11"])]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- client -> server -----------------------------------------------------------------------


class StartGeneration(_Payload):
    node_id: NodeId


class ClientStartGeneration(BaseModel):
    """The Generate button: start one new take of a Text-to-Image node."""

    type: Literal["client:start_generation"] = "client:start_generation"
    payload: StartGeneration


class CancelGeneration(_Payload):
    take_id: str = Field(min_length=1, max_length=200)


class ClientCancelGeneration(BaseModel):
    """Cancel a take while it is queued or generating: it leaves the queue, or stops at the
    next denoising step; it is recorded `cancelled` and its file never appears."""

    type: Literal["client:cancel_generation"] = "client:cancel_generation"
    payload: CancelGeneration


ClientMessage = Annotated[ClientStartGeneration | ClientCancelGeneration,
                          Field(discriminator="type")]
CLIENT_PAYLOADS: dict[str, type[_Payload]] = {
    "client:start_generation": StartGeneration,
    "client:cancel_generation": CancelGeneration,
}


# --- server -> client -----------------------------------------------------------------------


class QueuePlace(_Payload):
    """Where a queued take waits: its tier's queue, shared by every project of the workspace."""

    tier: Quality
    position: int = Field(ge=1, description="1 = the next take this tier's worker starts")
    reason: str = Field(examples=["waiting for a standard GPU worker (none is online yet)"])


class NodeStateUpdated(_Payload):
    node_id: NodeId
    state: NodeState = Field(
        description="derived from the node's takes (studio.graph.node_state): `queued` between "
        "the click and a worker picking the take up, `generating`, `completed`, `error`, "
        "`out_of_sync` (the active take no longer matches the node), `idle`"
    )
    take_id: str | None = Field(None, description="the take whose change caused this update")
    task_id: TaskId | None = None
    queue: QueuePlace | None = Field(
        None, description="while the take named by take_id is queued: its place in its tier's "
        "queue and why it waits; re-sent only when the place changes")
    attempt: int | None = Field(
        None, description="the take's attempt when a worker died and it is being retried (2)")


class TaskProgress(_Payload):
    task_id: TaskId
    node_id: NodeId
    take_id: str
    progress: int = Field(ge=0, le=100)
    step: str = Field(examples=["Denoising 1/2"])
    preview_path: str | None = Field(
        None, description="a live preview image, relative to the project (files route)"
    )


class TakeResult(_Payload):
    output_path: str = Field(description="relative to the project",
                             examples=["03_Renders/SCENE_01/SHOT_010/SHOT-010_v01_take01.png"])
    take_number: int
    take_id: str


class TaskSuccess(_Payload):
    task_id: TaskId
    node_id: NodeId
    result: TakeResult


class TaskFailed(_Payload):
    task_id: TaskId | None = Field(
        description="null when no task was started (e.g. no worker online for any tier)"
    )
    node_id: NodeId
    take_id: str | None = None
    error: str = Field(description="a message a person can read")


class TaskCancelled(_Payload):
    task_id: TaskId | None = None
    node_id: NodeId
    take_id: str


class TierState(_Payload):
    tier: Quality
    state: Literal["starting", "online", "offline"] = Field(
        description="starting: expected but no worker yet; offline: no worker (any more)")
    workers: int = Field(ge=0, description="task workers connected for this tier")
    queued: int = Field(ge=0, description="takes waiting in this tier's queue")
    generating: int = Field(ge=0)
    problem: str | None = Field(None, description="e.g. no weights, with the command that "
                                "fixes it")


class TierStates(_Payload):
    tiers: list[TierState]


class QualityFallback(_Payload):
    node_id: NodeId
    requested: Quality
    used: Quality
    reason: str = ""


class Error(_Payload):
    reason: str
    request_type: str | None = Field(None, description="the `type` of the refused message")


SERVER_PAYLOADS: dict[str, type[_Payload]] = {
    "server:node_state_updated": NodeStateUpdated,
    "server:task_progress": TaskProgress,
    "server:task_success": TaskSuccess,
    "server:task_failed": TaskFailed,
    "server:task_cancelled": TaskCancelled,
    "server:quality_fallback": QualityFallback,
    "server:tier_states": TierStates,
    "server:error": Error,
}


class ServerMessage(BaseModel):
    """Any server -> client frame; `payload` is the model SERVER_PAYLOADS names for `type`."""

    type: Literal[
        "server:node_state_updated",
        "server:task_progress",
        "server:task_success",
        "server:task_failed",
        "server:task_cancelled",
        "server:quality_fallback",
        "server:tier_states",
        "server:error",
    ]
    payload: dict[str, Any]


def server_message(payload: _Payload) -> dict[str, Any]:
    """The JSON object sent for a payload model (the type is looked up from its class)."""
    kind = next(t for t, cls in SERVER_PAYLOADS.items() if cls is type(payload))
    return {"type": kind, "payload": payload.model_dump(mode="json")}


def protocol_schema() -> dict[str, Any]:
    """JSON Schema of both directions, one entry per message type."""
    return {
        "envelope": {"type": "object", "required": ["type", "payload"],
                     "properties": {"type": {"type": "string"}, "payload": {"type": "object"}}},
        "client": {t: cls.model_json_schema() for t, cls in CLIENT_PAYLOADS.items()},
        "server": {t: cls.model_json_schema() for t, cls in SERVER_PAYLOADS.items()},
    }


_CLIENT: TypeAdapter[ClientStartGeneration | ClientCancelGeneration] = TypeAdapter(
    ClientMessage)


def parse_client_message(data: Any) -> ClientStartGeneration | ClientCancelGeneration:
    """Raises pydantic.ValidationError for anything that is not a known client message."""
    return _CLIENT.validate_python(data)
