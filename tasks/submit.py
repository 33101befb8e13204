"""Submitting a reserved take to its tier's warm task worker (the interactive path)."""

from __future__ import annotations

from prefect import tags

from studio.jobs import TakeJob
from tasks.prefect_retry import retry_transient
from tasks.text_to_image import take_tags, tier_task


def submit_take(job: TakeJob, retry_seconds: float | None = None) -> str:
    """`.delay()`s the take on its tier's task; returns the task run id. Synchronous (~0.15 s):
    call it from a thread in async code. A transient 503 is retried (tasks/prefect_retry.py) for
    `retry_seconds` (default STUDIO_PREFECT_RETRY_SECONDS): a repeated submission is harmless,
    the worker skips a take that is no longer queued."""
    def delay() -> str:
        with tags(*take_tags(job)):
            future = tier_task(job.quality_used).delay(job)
        return str(future.task_run_id)

    return retry_transient(delay, f"submitting take {job.take_id}", retry_seconds)
