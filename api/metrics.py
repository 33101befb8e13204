"""`GET /metrics`: Prometheus text for ops — takes by tier and status, queue depth per tier,
render seconds, task workers online per tier.

Counted at scrape time from what is durable (every project's takes in project.json) and from
Prefect's registry of connected task workers, so the numbers survive an API restart and agree
with what the canvas shows. Prefect's own server metrics are separate (`/api/metrics` on the
Prefect server with PREFECT_SERVER_METRICS_ENABLED=true; docs/ops-guide.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from api.auth import require_token
from api.deps import store_of
from studio.manifest import Project, TakeStatus
from studio.tiers import Quality

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])

RENDER_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TIERS = [q.value for q in Quality]


@dataclass
class Snapshot:
    takes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (tier, status) -> n
    render_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    workers: Counter[str] = field(default_factory=Counter)  # tier -> connected workers
    prefect_up: bool = True

    def add_projects(self, projects: Iterable[Project]) -> None:
        for project in projects:
            for node in project.nodes:
                for take in node.takes:
                    tier = take.quality_used.value
                    self.takes[(tier, take.status.value)] += 1
                    total = take.timings.get("total")
                    if take.status == TakeStatus.completed and total is not None:
                        self.render_seconds[tier].append(total)


class SnapshotCollector:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        finished = CounterMetricFamily(
            "studio_takes", "Takes that finished, by the tier that rendered them and outcome",
            labels=["tier", "status"])
        current = GaugeMetricFamily(
            "studio_takes_open", "Takes not finished yet, by tier and status (queued, generating)",
            labels=["tier", "status"])
        queue = GaugeMetricFamily(
            "studio_queue_depth", "Takes waiting for a task worker of the tier", labels=["tier"])
        workers = GaugeMetricFamily(
            "studio_task_workers_online", "Warm task workers connected to Prefect, per tier",
            labels=["tier"])
        for tier in TIERS:
            for status in (TakeStatus.completed, TakeStatus.failed):
                finished.add_metric([tier, status.value], s.takes[(tier, status.value)])
            for status in (TakeStatus.queued, TakeStatus.generating):
                current.add_metric([tier, status.value], s.takes[(tier, status.value)])
            queue.add_metric([tier], s.takes[(tier, TakeStatus.queued.value)])
            workers.add_metric([tier], s.workers[tier])
        yield from (finished, current, queue, workers)

        seconds = HistogramMetricFamily(
            "studio_render_seconds", "Seconds from a take's start to its image, per tier",
            labels=["tier"])
        for tier in TIERS:
            values = s.render_seconds.get(tier, [])
            buckets = [(f"{b:g}", sum(v <= b for v in values)) for b in RENDER_BUCKETS]
            buckets.append(("+Inf", len(values)))
            seconds.add_metric([tier], buckets, sum_value=sum(values))
        yield seconds
        yield GaugeMetricFamily("studio_prefect_up", "1 when the Prefect API answered this scrape",
                                value=int(s.prefect_up))


async def _workers_per_tier() -> Counter[str]:
    from tasks.availability import connected_task_workers
    from tasks.text_to_image import TIER_TASKS

    by_key = {t.task_key: q.value for q, t in TIER_TASKS.items()}
    counts: Counter[str] = Counter()
    for worker in await connected_task_workers(list(TIER_TASKS)):
        for tier in {by_key[k] for k in worker.get("task_keys", []) if k in by_key}:
            counts[tier] += 1
    return counts


async def snapshot(request: Request) -> Snapshot:
    store = store_of(request)
    s = Snapshot()
    s.add_projects(await asyncio.to_thread(store.list))
    try:
        s.workers = await asyncio.wait_for(_workers_per_tier(), timeout=5)
    except Exception as exc:  # metrics must still answer while Prefect is down
        log.warning("metrics: could not list task workers: %s", exc)
        s.prefect_up = False
    return s


@router.get("/metrics", dependencies=[Depends(require_token)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (scrape it; with STUDIO_API_TOKEN set, as a bearer token)."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(await snapshot(request)))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
