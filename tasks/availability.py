"""Which tiers have a warm task worker connected right now (Prefect's task-worker registry)."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client

from studio.tiers import Quality
from tasks.prefect_retry import aretry_transient
from tasks.text_to_image import TIER_TASKS

# A click waits on this answer: retry a transient error briefly, then say Prefect is unavailable.
RETRY_SECONDS = 30.0


async def connected_task_workers(qualities: list[Quality]) -> list[dict[str, Any]]:
    """Prefect's entries (`identifier`, `task_keys`) for the workers serving these tiers."""
    keys = [TIER_TASKS[q].task_key for q in qualities]

    async def ask() -> list[dict[str, Any]]:
        async with get_client() as client:
            # No client method wraps this route (prefect 3.9); Prefect's transport still
            # retries 503s, and our backoff goes on where its retries end.
            response = await client._client.post(
                "/task_workers/filter", json={"task_worker_filter": {"task_keys": keys}}
            )
            response.raise_for_status()
        return list(response.json())

    return await aretry_transient(ask, "listing task workers", RETRY_SECONDS)


async def online_tiers() -> set[Quality]:
    """Tiers whose task is served by at least one connected task worker."""
    by_key = {t.task_key: q for q, t in TIER_TASKS.items()}
    online: set[Quality] = set()
    for worker in await connected_task_workers(list(TIER_TASKS)):
        online.update(by_key[k] for k in worker.get("task_keys", []) if k in by_key)
    return online
