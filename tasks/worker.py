"""The warm task worker of one quality tier: `studio worker --tier standard`.

A long-lived process that serves its tier's background task with `limit=1` (one take at a time
per GPU) and loads the tier's pipeline before it takes work, so the first click is not a cold
load and every later take reuses the loaded pipeline.

Prefect's task worker re-subscribes by itself only when a connection is refused or dropped; a
Prefect server that accepts the connection but answers late (a restart on a loaded machine:
"timed out during opening handshake") or closes it mid-handshake makes `serve` raise, which
used to end the process: the supervisor then started a new one, which loaded torch and the
pipeline again (minutes under load) while the tier's takes waited. The worker subscribes again
instead, in the same process, with its pipeline still loaded.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

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


def serve_tier(quality: Quality, limit: int = 1, warm: bool = True) -> None:
    from prefect.task_worker import serve

    if os.environ.get("STUDIO_RUNNER_MODE", "in-process") == "in-process" and warm:
        preload(quality)
    _say(f"ready: serving {tier_task(quality).name} (limit {limit}) at "
         f"{os.environ.get('PREFECT_API_URL', 'the configured Prefect API')} on {_gpu_text()}")
    sys.stdout.flush()
    start_heartbeat(quality)  # ops' "tier offline" automation listens for it
    serve_until_stopped(lambda: serve(tier_task(quality), limit=limit))


# Waits between subscriptions after a failed one: short, as the server is usually back.
RESUBSCRIBE_PAUSES = (0.5, 1.0, 2.0)


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The connection error `serve` ended with (alone or as the only kind in its exception
    group), or None for anything else: a bug or a stop must still end the process."""
    import websockets.exceptions

    if isinstance(exc, BaseExceptionGroup):
        leaves = [_connection_failure(e) for e in exc.exceptions]
        return leaves[0] if leaves and all(leaves) else None
    kinds = (OSError, TimeoutError, websockets.exceptions.WebSocketException)
    return exc if isinstance(exc, kinds) else None


def serve_until_stopped(serve_once: Callable[[], Any],
                        pauses: tuple[float, ...] = RESUBSCRIBE_PAUSES) -> None:
    """Runs `serve_once` again whenever it ends on a connection failure to Prefect."""
    failures = 0
    while True:
        try:
            serve_once()
            return
        except BaseException as exc:
            failure = _connection_failure(exc)
            if failure is None:
                raise
            pause = pauses[min(failures, len(pauses) - 1)]
            failures += 1
            _say(f"lost Prefect's task subscription ({type(failure).__name__}: {failure}); "
                 f"subscribing again in {pause:.1f} s, pipeline kept")
            time.sleep(pause)
