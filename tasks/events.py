"""The one place a take's event is emitted to Prefect's event stream (the types, their labels
and their parser: studio/take_events.py)."""

from __future__ import annotations

import uuid

from prefect.events import emit_event

from studio.take_events import PREFIX, TakeEvent

__all__ = ["PREFIX", "emit"]


def emit(event: TakeEvent, event_id: uuid.UUID | None = None) -> None:
    name, resource, payload = event.wire()
    emit_event(event=name, resource=resource, payload=payload, id=event_id or uuid.uuid4())
