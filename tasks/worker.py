"""The warm task worker of one quality tier: `studio worker --tier standard`.

A long-lived process that serves its tier's background task with `limit=1` (one take at a time
per GPU) and loads the tier's pipeline before it takes work, so the first click is not a cold
load and every later take reuses the loaded pipeline.
"""

from __future__ import annotations

import os
import sys
import time

from runners.take_request import model_dir
from studio.tiers import TIERS, Quality
from studio.workspace import Workspace
from tasks.heartbeat import start_heartbeat
from tasks.text_to_image import tier_task


def _say(message: str) -> None:
    print(f"[worker {os.getpid()}] {message}", flush=True)


def _gpu_text() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "every GPU CUDA sees" if visible is None else f"CUDA_VISIBLE_DEVICES={visible}"


def preload(quality: Quality) -> bool:
    """Loads the tier's pipeline into this process; False when its weights are missing."""
    tier = TIERS[quality]
    workspace = Workspace()
    folder = model_dir(workspace.root, quality)
    if not (folder / "model_index.json").exists():
        _say(f"{quality.value}: no weights at {folder}; takes will fail until "
             "`make download-models` has run")
        return False
    from runners.flux.generation import preload as load_pipeline

    started = time.perf_counter()
    load_pipeline(quality, folder)
    _say(f"{quality.value}: {tier.pipeline_id} loaded from {folder} "
         f"in {time.perf_counter() - started:.1f} s")
    return True


def serve_tier(quality: Quality | str, limit: int = 1, warm: bool = True) -> None:
    from prefect.task_worker import serve

    q = Quality(quality)
    if os.environ.get("STUDIO_RUNNER_MODE", "in-process") == "in-process" and warm:
        preload(q)
    _say(f"ready: serving {tier_task(q).name} (limit {limit}) at "
         f"{os.environ.get('PREFECT_API_URL', 'the configured Prefect API')} on {_gpu_text()}")
    sys.stdout.flush()
    start_heartbeat(q)  # ops' "tier offline" automation listens for it
    serve(tier_task(q), limit=limit)
