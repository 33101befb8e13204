"""A warm task worker's heartbeat as a Prefect event, so ops see each tier's workers in the
Prefect UI's event feed and an automation can say when a tier has gone quiet.

Prefect's task workers emit no events of their own (only pool workers do), hence this one.
"""

from __future__ import annotations

import os
import socket
import threading

from prefect.events import emit_event

from studio.tiers import Quality

HEARTBEAT = "studio.worker.heartbeat"
EVERY_S = float(os.environ.get("STUDIO_HEARTBEAT_SECONDS", "15"))


def worker_resource(quality: Quality) -> dict[str, str]:
    host = socket.gethostname()
    return {
        "prefect.resource.id": f"studio.task-worker.{quality.value}.{host}-{os.getpid()}",
        "prefect.resource.name": f"{quality.value} task worker on {host} (pid {os.getpid()})",
        "studio.tier": quality.value,
        "studio.host": host,
    }


def start_heartbeat(quality: Quality, every_s: float = EVERY_S) -> threading.Event:
    """Emits a heartbeat now and every `every_s` seconds from a daemon thread; set the returned
    event to stop it."""
    stop = threading.Event()
    resource = worker_resource(quality)

    def beat() -> None:
        while not stop.is_set():
            emit_event(event=HEARTBEAT, resource=resource, payload={"every_s": every_s})
            stop.wait(every_s)

    threading.Thread(target=beat, name="studio-heartbeat", daemon=True).start()
    return stop
