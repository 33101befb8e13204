"""Follows a project's take events through Prefect's event stream, in a process of its own:
`python -m tests.tools.follow_events PROJECT_ID OUT.jsonl` (one JSON event per line)."""

from __future__ import annotations

import asyncio
import json
import sys

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter


async def follow(project_id: str, out_path: str) -> None:
    event_filter = EventFilter(
        event=EventNameFilter(prefix=["studio.take."]),
        any_resource=EventAnyResourceFilter(labels={"studio.project": [project_id]}),
    )
    async with get_events_subscriber(filter=event_filter) as subscriber:
        print("subscribed", flush=True)
        with open(out_path, "a") as out:
            async for event in subscriber:
                out.write(
                    json.dumps(
                        {
                            "event": event.event,
                            "resource": dict(event.resource),
                            "payload": event.payload,
                        }
                    )
                    + "\n"
                )
                out.flush()


if __name__ == "__main__":
    asyncio.run(follow(sys.argv[1], sys.argv[2]))
