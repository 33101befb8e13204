"""Ops notifications: `python -m scripts.create_automations` (STUDIO_ALERT_WEBHOOK_URL set).

Creates (or updates) the webhook notification block `studio-alerts` pointing at the URL, then
every automation of deployments/automations.yaml with its notifications sent to that block.
Run again after editing the file: automations of the same name are replaced, not duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

REPO = Path(__file__).resolve().parent.parent
AUTOMATIONS_FILE = REPO / "deployments" / "automations.yaml"
BLOCK_NAME = "studio-alerts"


def load_automations(path: Path, block_id: UUID) -> list[dict[str, Any]]:
    """The file's automations, each notification action pointed at `block_id`."""
    data = yaml.safe_load(path.read_text())
    automations = data["automations"] if isinstance(data, dict) else data
    for automation in automations:
        for action in automation.get("actions", []):
            if action.get("type") in ("send-notification", "call-webhook"):
                action.setdefault("block_document_id", str(block_id))
    return automations


async def save_block(url: str) -> UUID:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="Generative Studio alerts",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    )
    return await block.asave(BLOCK_NAME, overwrite=True)


async def create_all(url: str, path: Path = AUTOMATIONS_FILE) -> dict[str, UUID]:
    """Name -> id of every automation created."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    block_id = await save_block(url)
    created: dict[str, UUID] = {}
    async with get_client() as client:
        for raw in load_automations(path, block_id):
            automation = AutomationCore.model_validate(raw)
            for old in await client.read_automations_by_name(automation.name):
                await client.delete_automation(old.id)
            created[automation.name] = await client.create_automation(automation)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.create_automations",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webhook-url", default=os.environ.get("STUDIO_ALERT_WEBHOOK_URL"),
                        help="where notifications are POSTed (default: $STUDIO_ALERT_WEBHOOK_URL)")
    parser.add_argument("--file", type=Path, default=AUTOMATIONS_FILE)
    args = parser.parse_args(argv)
    if not args.webhook_url:
        parser.error("set STUDIO_ALERT_WEBHOOK_URL (or --webhook-url) to where alerts go, "
                     "e.g. a Slack or Teams incoming-webhook relay")
    created = asyncio.run(create_all(args.webhook_url, args.file))
    for name, automation_id in created.items():
        print(f"{name}: {automation_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
