"""Which tiers have a warm task worker connected right now (Prefect's task-worker registry)."""

from __future__ import annotations

from prefect.client.orchestration import get_client

from studio.tiers import Quality
from tasks.text_to_image import TIER_TASKS


async def online_tiers() -> set[Quality]:
    """Tiers whose task is served by at least one connected task worker."""
    keys = {t.task_key: q for q, t in TIER_TASKS.items()}
    async with get_client() as client:
        response = await client._client.post(
            "/task_workers/filter",
            json={"task_worker_filter": {"task_keys": list(keys)}},
        )
        response.raise_for_status()
    online: set[Quality] = set()
    for worker in response.json():
        online.update(keys[k] for k in worker.get("task_keys", []) if k in keys)
    return online
