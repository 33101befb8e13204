"""Follows a node's take events through Prefect's event stream, in a process of its own:
`python -m tests.tools.follow_events PROJECT_ID NODE_ID OUT.jsonl` (one JSON event per line).

The node's id is in the filter because project ids are unique only within a workspace, and
Prefect's subscriber replays the last minute: the session's other workspaces' projects of the
same name would be followed too."""

from __future__ import annotations

import asyncio
import json
import sys

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter


async def follow(project_id: str, node_id: str, out_path: str) -> None:
    event_filter = EventFilter(
        event=EventNameFilter(prefix=["studio.take."]),
        any_resource=EventAnyResourceFilter(
            labels={"studio.project": [project_id], "studio.node": [node_id]}
        ),
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
    asyncio.run(follow(sys.argv[1], sys.argv[2], sys.argv[3]))
