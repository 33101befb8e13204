"""The project's own Prefect events: a take's start, progress, success and failure.

Background task runs carry no related resources, so every event names its project, node, take
and tier itself, as labels of its resource; any process can follow a take with an
`any_resource` filter on those labels.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from studio.jobs import TakeJob

PREFIX = "studio.take."
STARTED = PREFIX + "started"
PROGRESS = PREFIX + "progress"
SUCCEEDED = PREFIX + "succeeded"
FAILED = PREFIX + "failed"
CANCELLED = PREFIX + "cancelled"


def take_resource(job: TakeJob, task_run_id: str | None) -> dict[str, str]:
    return {
        "prefect.resource.id": f"studio.take.{job.take_id}",
        "prefect.resource.name": f"{job.project_id} · {job.node_id} · take{job.take_number:02d}",
        "studio.project": job.project_id,
        "studio.node": job.node_id,
        "studio.take": job.take_id,
        "studio.take-number": str(job.take_number),
        "studio.tier": job.quality_used.value,
        "studio.task-run": task_run_id or "",
    }


def emit(name: str, job: TakeJob, task_run_id: str | None, **payload: Any) -> None:
    emit_event(event=name, resource=take_resource(job, task_run_id), payload=payload)
