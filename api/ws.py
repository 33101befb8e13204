"""WebSocket /ws/{project_id}: the envelope, bad-input handling, and the click handler."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from api.auth import token_ok
from api.cancel import NoSuchTake, cancel_generation
from api.deps import gateway_of
from api.hub import Client, Message
from api.messages import (
    ClientCancelGeneration,
    ClientStartGeneration,
    Error,
    parse_client_message,
    server_message,
)
from api.security import FrameRefused, load_frame
from api.views import in_flight_takes, snapshot
from studio.manifest import ManifestError
from studio.store import ProjectNotFound
from studio.takes import TakeError

log = logging.getLogger(__name__)
router = APIRouter()

CLIENT_TYPES = ("client:start_generation", "client:cancel_generation")


def error(reason: str, request_type: str | None = None) -> Message:
    return server_message(Error(reason=reason, request_type=request_type))


def parse(raw: str) -> ClientStartGeneration | ClientCancelGeneration | Message:
    """The client's message, or the server:error explaining why it is refused."""
    try:
        data = load_frame(raw)  # bounded in size and depth before the parser sees it
    except FrameRefused as exc:
        return error(str(exc))
    if not isinstance(data, dict):
        return error('a message is a JSON object {"type": "...", "payload": {...}}')
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        return error(f"unknown message type {kind!r}; known: {', '.join(CLIENT_TYPES)}",
                     kind if isinstance(kind, str) else None)
    try:
        return parse_client_message(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        return error(f"bad {kind} message: {problems}", kind)


@router.websocket("/ws/{project_id}")
async def project_socket(websocket: WebSocket, project_id: str) -> None:
    gateway = gateway_of(websocket)
    await websocket.accept()
    if not token_ok(gateway.settings.token, websocket):
        # Accepted first so the client sees the close code, not a bare HTTP 403.
        await websocket.close(code=1008, reason="missing or wrong STUDIO_API_TOKEN")
        return

    async def on_connect() -> list[Message]:
        try:
            project = await gateway.load(project_id)
        except ProjectNotFound:
            return [error(f"project {project_id!r} does not exist")]
        except ManifestError as exc:
            return [error(f"project {project_id!r} cannot be read: {exc}")]
        for node_id, take in in_flight_takes(project):
            gateway.relay.track(project_id, node_id, take.id)
        # Tier states come with each change (server:tier_states); on load the canvas reads
        # them from /healthz.
        return snapshot(project, lambda t: gateway.relay.place(t.quality_used, t.id))

    client = Client(websocket, project_id)
    await gateway.hub.attach(client, on_connect)
    try:
        while True:
            frame = await websocket.receive()
            if frame["type"] == "websocket.disconnect":
                break
            text = frame.get("text")
            if text is None:
                client.send(error("binary frames are not part of the protocol; send JSON text"))
                continue
            message = parse(text)
            if isinstance(message, dict):
                client.send(message)
                continue
            if isinstance(message, ClientCancelGeneration):
                gateway.spawn(_cancel(gateway, project_id, message.payload.take_id, client))
                continue
            # Each click runs on its own, so twenty clicks do not queue behind each other.
            gateway.spawn(gateway.dispatcher.start_generation(
                project_id, message.payload.node_id, client.send))
    except WebSocketDisconnect:
        pass
    finally:
        await gateway.hub.detach(client)


async def _cancel(gateway: Any, project_id: str, take_id: str, client: Client) -> None:
    try:
        await cancel_generation(gateway.store, gateway.relay, project_id, take_id)
    except (NoSuchTake, TakeError, ProjectNotFound) as exc:
        client.send(error(str(exc), "client:cancel_generation"))
