"""A take's events, typed: what every process says about a take and hears back.

One model per event (a discriminated union on `kind`), one way to put an event on the wire
(`TakeEventBase.wire`: Prefect event name, resource labels, payload) and one way to read it back
(`parse`). Prefect is not imported here: tasks/events.py emits what `wire` returns.

Background task runs carry no related resources, so every event names its project, node, take
and tier itself, as labels of its resource; any process can follow a take with an
`any_resource` filter on those labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from studio.jobs import TakeJob
from studio.manifest import Take
from studio.tiers import Quality

PREFIX = "studio.take."


class TakeEventBase(BaseModel):
    model_config = ConfigDict(frozen=True)

    project_id: str
    node_id: str
    take_id: str
    take_number: int = 0
    tier: Quality | None = None
    task_run_id: str | None = None

    # The resource labels, shared by every kind.
    LABELS: ClassVar[dict[str, str]] = {
        "project_id": "studio.project", "node_id": "studio.node", "take_id": "studio.take",
        "take_number": "studio.take-number", "tier": "studio.tier",
        "task_run_id": "studio.task-run",
    }

    @property
    def name(self) -> str:
        return PREFIX + self.kind

    def wire(self) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(event name, resource labels, payload): what Prefect's `emit_event` takes."""
        resource = {
            "prefect.resource.id": f"studio.take.{self.take_id}",
            "prefect.resource.name": f"{self.project_id} · {self.node_id} · "
                                     f"take{self.take_number:02d}",
        }
        for field, label in self.LABELS.items():
            value = getattr(self, field)
            resource[label] = "" if value is None else str(value)
        payload = self.model_dump(mode="json", exclude={*self.LABELS, "kind"})
        return self.name, resource, payload

    @classmethod
    def of_job(cls, job: TakeJob, task_run_id: str | None, **fields: Any) -> Any:
        return cls(project_id=job.project_id, node_id=job.node_id, take_id=job.take_id,
                   take_number=job.take_number, tier=job.quality_used,
                   task_run_id=task_run_id, **fields)

    @classmethod
    def of_take(cls, project_id: str, node_id: str, take: Take, task_run_id: str | None,
                **fields: Any) -> Any:
        return cls(project_id=project_id, node_id=node_id, take_id=take.id,
                   take_number=take.number, tier=take.quality_used,
                   task_run_id=task_run_id, **fields)


class TakeQueued(TakeEventBase):
    """Handed to Prefect (by a dispatcher or the reconciler); other API processes show it."""

    kind: Literal["queued"] = "queued"
    why: str = ""


class TakeStarted(TakeEventBase):
    kind: Literal["started"] = "started"
    attempt: int | None = None


class TakeProgress(TakeEventBase):
    kind: Literal["progress"] = "progress"
    progress: int = Field(0, ge=0, le=100)
    step: str = ""
    preview_path: str | None = Field(None, description="relative to the project folder")


class TakeSucceeded(TakeEventBase):
    kind: Literal["succeeded"] = "succeeded"
    output_path: str = ""


class TakeFailed(TakeEventBase):
    kind: Literal["failed"] = "failed"
    error: str = "the take failed"


class TakeCancelled(TakeEventBase):
    kind: Literal["cancelled"] = "cancelled"


TakeEvent = Annotated[
    TakeQueued | TakeStarted | TakeProgress | TakeSucceeded | TakeFailed | TakeCancelled,
    Field(discriminator="kind"),
]
_EVENT: TypeAdapter[TakeEvent] = TypeAdapter(TakeEvent)


def parse(name: str, resource: Mapping[str, str], payload: Mapping[str, Any]) -> TakeEvent | None:
    """The typed event behind a Prefect event's name, labels and payload; None for an event that
    is not a take's (or is malformed: a relay must not stop on one bad event)."""
    if not name.startswith(PREFIX):
        return None
    fields: dict[str, Any] = {**payload, "kind": name.removeprefix(PREFIX)}
    for field, label in TakeEventBase.LABELS.items():
        value = resource.get(label)
        if value:  # an empty label is a field left unset
            fields[field] = value
    try:
        return _EVENT.validate_python(fields)
    except ValidationError:
        return None
