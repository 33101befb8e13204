"""Which warm task workers the local stack starts on which GPU (STUDIO_GPUS, studio.gpus).

A worker pins itself (`studio worker --tier T` reads the same map); this decides which tiers
get a worker at all: on a GPU machine only the tiers the map gives a GPU, so two FLUX.1-dev
tiers never load on one card. Without GPUs (CPU, the demo) nothing changes.
"""

from __future__ import annotations

import os

from runners.gpus import list_gpus
from studio.gpus import GpuMapError, format_gpu_map, resolve_gpu_map
from studio.tiers import Quality


def plan_gpu_workers(tiers: list[str], demo: bool = False,
                     environ: dict[str, str] | None = None) -> tuple[list[str], str]:
    """(the tiers to start workers for, the banner line). Raises SystemExit on a bad map."""
    env = os.environ if environ is None else environ
    gpus = list_gpus()
    try:
        mapping = resolve_gpu_map(env.get("STUDIO_GPUS"), gpus)
    except GpuMapError as exc:
        raise SystemExit(f"STUDIO_GPUS: {exc}") from None
    if not gpus:
        return tiers, "  GPUs          none found: the workers render on the CPU"
    if demo or not mapping:
        why = "demo" if demo else "several GPUs and no STUDIO_GPUS map"
        return tiers, f"  GPUs          {len(gpus)}; every worker sees all of them ({why})"
    chosen = [t for t in tiers if Quality(t) in mapping]
    source = "STUDIO_GPUS" if env.get("STUDIO_GPUS", "").strip() else "the tier that fits"
    line = f"  GPUs          {format_gpu_map(mapping)} ({source})"
    dropped = [t for t in tiers if t not in chosen]
    if dropped:
        line += f"; no GPU for {', '.join(dropped)}: no worker (set STUDIO_GPUS)"
    return chosen, line
