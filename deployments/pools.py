"""The work pools: one Docker pool per GPU tier, and the Process pool `local` for the embedded
default. Their base job templates derive from prefect-docker's own default template, with the
tier's image, the GPU request, the workspace volume and the env set as defaults.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from studio.tiers import TIERS, Quality, Tier

LOCAL_POOL = "local"
WORKSPACE_VOLUME = os.environ.get("STUDIO_WORKSPACE_VOLUME", "generative_studio_workspace")

# prefect-docker has no `gpus` variable; this is the SDK's form of `docker run --gpus all`.
GPU_REQUEST: dict[str, Any] = {
    "device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
}


def docker_pool_template(tier: Tier) -> dict[str, Any]:
    """The base job template of the tier's Docker pool."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["image"]["default"] = tier.image
    props["volumes"]["default"] = [f"{WORKSPACE_VOLUME}:/workspace:rw"]
    props["env"]["default"] = {
        "STUDIO_WORKSPACE": "/workspace",
        "STUDIO_RUNNER_MODE": "in-process",
        "QUALITY": tier.quality.value,
    }
    props["container_create_kwargs"]["default"] = GPU_REQUEST
    props["auto_remove"]["default"] = True
    return template


def pool_specs() -> dict[str, dict[str, Any]]:
    """Name -> type, base job template and concurrency limit (one take per GPU at a time)."""
    specs: dict[str, dict[str, Any]] = {
        LOCAL_POOL: {"type": "process", "template": None, "concurrency_limit": 1},
    }
    for quality in (Quality.low, Quality.standard, Quality.high):
        tier = TIERS[quality]
        specs[tier.work_pool] = {
            "type": "docker",
            "template": docker_pool_template(tier),
            "concurrency_limit": 1,
        }
    return specs


async def ensure_pools(names: list[str] | None = None) -> list[str]:
    """Creates the pools that are missing and updates the others' templates and limits."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    done = []
    async with get_client() as client:
        for name, spec in pool_specs().items():
            if names and name not in names:
                continue
            template = spec["template"] or ProcessWorker.get_default_base_job_template()
            try:
                await client.read_work_pool(name)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(
                    name=name, type=spec["type"], base_job_template=template,
                    concurrency_limit=spec["concurrency_limit"],
                    description=f"Generative Studio: {name}",
                ))
            else:
                await client.update_work_pool(name, WorkPoolUpdate(
                    base_job_template=template, concurrency_limit=spec["concurrency_limit"],
                ))
            done.append(name)
    return done
