"""The work pools: one Docker pool per GPU tier, and the Process pool `local` for the embedded
default. Their base job templates derive from prefect-docker's own default template, with the
tier's image, the GPU request, the workspace volume and the env set as defaults.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from studio.gpus import default_gpu_map, parse_gpu_map
from studio.tiers import TIERS, Quality, Tier

LOCAL_POOL = "local"
WORKSPACE_VOLUME = "generative_studio_workspace"  # docker-compose.yml binds it to the workspace
CONTAINER_USER = "1000:1000"

# Hardening of every flow-run container (uid 1000 as the images): the root filesystem is
# read-only, /workspace (the volume) and /tmp the only places it writes, no privilege gain.
HARDENING: dict[str, Any] = {
    "user": CONTAINER_USER,
    "read_only": True,
    "tmpfs": {"/tmp": "rw,nosuid,nodev"},
    "security_opt": ["no-new-privileges"],
    "cap_drop": ["ALL"],
}


def flow_image(tier: Tier, registry: str | None = None) -> str:
    """`gms-studio:1.0-standard`: the flow-run image of the tier, behind STUDIO_IMAGE_REGISTRY
    (e.g. `registry.example.com/studio/`) when images come from a registry."""
    prefix = os.environ.get("STUDIO_IMAGE_REGISTRY", "") if registry is None else registry
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{tier.flow_image}"


def pool_gpu_map() -> dict[Quality, int]:
    """STUDIO_GPUS as written (the Docker host checks it when a container starts), or the
    default for this machine's GPUs when unset."""
    configured = os.environ.get("STUDIO_GPUS", "")
    if configured.strip():
        return parse_gpu_map(configured)
    from runners.gpus import list_gpus

    return default_gpu_map(list_gpus())


def gpu_device_requests(index: int | None) -> list[dict[str, Any]]:
    """The Docker API's form of `--gpus device=<index>` (or `--gpus all` for an unmapped tier)."""
    request: dict[str, Any] = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if index is None:
        request["count"] = -1
    else:
        request["device_ids"] = [str(index)]
    return [request]


def docker_pool_template(tier: Tier, gpus: dict[Quality, int] | None = None) -> dict[str, Any]:
    """The base job template of the tier's Docker pool (prefect-docker's default, customised).

    Configuration (env of whoever creates the pools): STUDIO_GPUS (which GPU serves the tier),
    STUDIO_IMAGE_REGISTRY, STUDIO_IMAGE_PULL_POLICY (default IfNotPresent with a registry,
    Never for images built on the Docker host), STUDIO_WORKSPACE_VOLUME,
    STUDIO_ADVERTISED_PREFECT_API_URL (the Prefect API as containers reach it; default: the
    worker's own), STUDIO_PUBLIC_URL (the studio API, for the take artifacts' image links),
    STUDIO_DOCKER_NETWORK_MODE (e.g. host).
    """
    from prefect_docker.worker import DockerWorker

    gpus = pool_gpu_map() if gpus is None else gpus
    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["image"]["default"] = flow_image(tier)
    registry = os.environ.get("STUDIO_IMAGE_REGISTRY", "")
    props["image_pull_policy"]["default"] = os.environ.get(
        "STUDIO_IMAGE_PULL_POLICY", "IfNotPresent" if registry else "Never")
    volume = os.environ.get("STUDIO_WORKSPACE_VOLUME", WORKSPACE_VOLUME)
    props["volumes"]["default"] = [f"{volume}:/workspace:rw"]
    env = {
        "STUDIO_WORKSPACE": "/workspace",
        "STUDIO_RUNNER_MODE": "in-process",
        "QUALITY": tier.quality.value,
        "PREFECT_HOME": "/tmp/prefect",
        "STUDIO_GPUS": "",  # the container sees only its device request's GPU
    }
    for name, source in (("PREFECT_API_URL", "STUDIO_ADVERTISED_PREFECT_API_URL"),
                         ("STUDIO_PUBLIC_URL", "STUDIO_PUBLIC_URL")):
        if os.environ.get(source):
            env[name] = os.environ[source]
    props["env"]["default"] = env
    network_mode = os.environ.get("STUDIO_DOCKER_NETWORK_MODE")
    if network_mode:
        props["network_mode"]["default"] = network_mode
    props["auto_remove"]["default"] = True
    # The GPU request is a variable of its own, so a deployment (or a test on a machine without
    # GPUs) changes it without dropping the hardening below.
    props["device_requests"] = {
        "title": "GPU request",
        "description": "Docker device requests: the tier's GPU from STUDIO_GPUS "
                       "(device_ids), or every GPU when the map has none for it.",
        "type": "array",
        "items": {"type": "object"},
        "default": gpu_device_requests(gpus.get(tier.quality)),
    }
    # Fixed, not a variable: a deployment's job variables replace a variable whole, and would
    # drop the hardening with it.
    del props["container_create_kwargs"]
    template["job_configuration"]["container_create_kwargs"] = {
        **HARDENING,
        "device_requests": "{{ device_requests }}",
    }
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


async def ensure_pools(names: list[str] | None = None, kubernetes: bool = False) -> list[str]:
    """Creates the pools that are missing and updates the others' templates and limits.

    kubernetes: the `k8s-gpu-*` pools too (needs prefect-kubernetes)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    specs = pool_specs()
    if kubernetes:
        from deployments.kubernetes_pools import kubernetes_pool_specs

        specs.update(kubernetes_pool_specs())
    done = []
    async with get_client() as client:
        for name, spec in specs.items():
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
