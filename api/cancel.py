"""Cancelling a take (client:cancel_generation, DELETE .../takes/{take_id}).

Queued: it leaves the queue at once — recorded `cancelled`, its Prefect run set Cancelled (a
copy Prefect still delivers is skipped by the worker). Generating: a flag its worker checks
between denoising steps; the worker stops, writes no file, records `cancelled` and ends its
run Cancelled. The flag is written first, so a take starting meanwhile stops too.
"""

from __future__ import annotations

import asyncio
import uuid

from prefect.client.orchestration import get_client
from prefect.states import Cancelled

from api.relay import Relay
from studio.manifest import Take, TakeStatus
from studio.store import ProjectStore
from studio.take_events import TakeCancelled
from studio.takes import TakeError, cancel_if_queued
from tasks.cancel import request_cancel


class NoSuchTake(LookupError):
    pass


def find_take(store: ProjectStore, project_id: str, take_id: str) -> tuple[str, Take]:
    for node in store.load(project_id).nodes:
        take = node.get_take(take_id)
        if take is not None:
            return node.id, take
    raise NoSuchTake(f"project {project_id} has no take {take_id!r}")


async def cancel_generation(store: ProjectStore, relay: Relay, project_id: str,
                            take_id: str) -> Take:
    """Cancels a queued or generating take; raises NoSuchTake or TakeError (already ended)."""
    node_id, take = await asyncio.to_thread(find_take, store, project_id, take_id)
    if take.status not in (TakeStatus.queued, TakeStatus.generating):
        raise TakeError(f"take {take.number} is {take.status}; only a queued or generating "
                        "take can be cancelled")
    await asyncio.to_thread(request_cancel, store.workspace.root, take_id)
    try:
        take = await asyncio.to_thread(cancel_if_queued, store, project_id, node_id, take_id)
    except TakeError:
        return take  # it ended meanwhile
    if take.status != TakeStatus.cancelled:
        return take  # generating: its worker stops at the next step and says so
    if take.task_run_id:
        async with get_client() as client:
            await client.set_task_run_state(uuid.UUID(take.task_run_id),
                                            Cancelled(message="cancelled while queued"),
                                            force=True)
    await relay.announce_cancelled(project_id, node_id, take_id, take.task_run_id)
    relay.emit(TakeCancelled.of_take(project_id, node_id, take, take.task_run_id))
    return take
