"""Kubernetes work pools per GPU tier: `k8s-gpu-12gb`, `k8s-gpu-16gb`, `k8s-gpu-24gb`.

Their base job templates derive from prefect-kubernetes' default and add what its default lacks
(PrefectHQ/prefect#19779): the `nvidia.com/gpu` limit, a node selector per GPU class and the
NVIDIA toleration, all declared variables a deployment may change; the workspace volume (a
PersistentVolumeClaim) at /workspace; and the same hardening as the Docker pools (uid 1000,
read-only root filesystem, /tmp an emptyDir, no privilege escalation, no capabilities).
"""

from __future__ import annotations

import copy
import os
from typing import Any

from studio.tiers import TIERS, Quality, Tier

# Where the studio's GPU nodes say which tier they serve: `kubectl label node <node>
# gms-studio/gpu-pool=k8s-gpu-24gb` (docs/deploy.md). A deployment may select otherwise, e.g.
# on GPU Feature Discovery's `nvidia.com/gpu.product`.
NODE_LABEL = "gms-studio/gpu-pool"
NVIDIA_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
WORKSPACE_CLAIM = "generative-studio-workspace"


def k8s_pool_name(tier: Tier) -> str:
    return f"k8s-{tier.work_pool}"


def _variable(title: str, description: str, default: Any, schema: dict[str, Any]) -> dict:
    return {"title": title, "description": description, "default": default, **schema}


def kubernetes_pool_template(tier: Tier) -> dict[str, Any]:
    """The base job template of the tier's Kubernetes pool.

    Configuration (env of whoever creates the pools): STUDIO_IMAGE_REGISTRY (where the cluster
    pulls gms-studio from), STUDIO_K8S_NAMESPACE, STUDIO_K8S_WORKSPACE_CLAIM,
    STUDIO_ADVERTISED_PREFECT_API_URL, STUDIO_PUBLIC_URL.
    """
    from prefect_kubernetes.worker import KubernetesWorker

    from deployments.pools import flow_image

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["image"]["default"] = flow_image(tier)
    props["image_pull_policy"]["default"] = "IfNotPresent"
    if os.environ.get("STUDIO_K8S_NAMESPACE"):
        props["namespace"]["default"] = os.environ["STUDIO_K8S_NAMESPACE"]
    env = {
        "STUDIO_WORKSPACE": "/workspace",
        "STUDIO_RUNNER_MODE": "in-process",
        "QUALITY": tier.quality.value,
        "PREFECT_HOME": "/tmp/prefect",
        "STUDIO_GPUS": "",  # the pod sees its one GPU; the map is the node selector's job
    }
    for name, source in (("PREFECT_API_URL", "STUDIO_ADVERTISED_PREFECT_API_URL"),
                         ("STUDIO_PUBLIC_URL", "STUDIO_PUBLIC_URL")):
        if os.environ.get(source):
            env[name] = os.environ[source]
    props["env"]["default"] = env
    # A Kubernetes quantity is a string ("1"); the API models refuse a bare number.
    props["gpu_count"] = _variable(
        "GPUs", "nvidia.com/gpu limit of the flow-run container (one take per GPU)", "1",
        {"type": "string", "pattern": "^[0-9]+$"})
    props["node_selector"] = _variable(
        "Node selector", f"the GPU nodes of this tier (label them {NODE_LABEL}=<pool>)",
        {NODE_LABEL: k8s_pool_name(tier)},
        {"type": "object", "additionalProperties": {"type": "string"}})
    props["tolerations"] = _variable(
        "Tolerations", "the taint GPU nodes carry (NVIDIA's operator: nvidia.com/gpu)",
        [NVIDIA_TOLERATION], {"type": "array", "items": {"type": "object"}})
    props["workspace_claim"] = _variable(
        "Workspace volume claim", "the PersistentVolumeClaim mounted at /workspace "
        "(projects and models; ReadWriteMany across GPU nodes)",
        os.environ.get("STUDIO_K8S_WORKSPACE_CLAIM", WORKSPACE_CLAIM), {"type": "string"})

    job_spec = template["job_configuration"]["job_manifest"]["spec"]
    pod = job_spec["template"]["spec"]
    # prefect-kubernetes' default puts these Job fields in the pod spec, where the API has no
    # such fields (strict validation refuses them): they belong to the Job.
    for field in ("parallelism", "completions"):
        if field in pod:
            job_spec[field] = pod.pop(field)
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                              "fsGroup": 1000}
    pod["volumes"] = [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "{{ workspace_claim }}"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    container = pod["containers"][0]
    container.setdefault("resources", {}).setdefault("limits", {})["nvidia.com/gpu"] = \
        "{{ gpu_count }}"
    container["volumeMounts"] = [{"name": "workspace", "mountPath": "/workspace"},
                                 {"name": "tmp", "mountPath": "/tmp"}]
    container["securityContext"] = {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}
    return template


def kubernetes_pool_specs() -> dict[str, dict[str, Any]]:
    return {
        k8s_pool_name(TIERS[q]): {"type": "kubernetes",
                                  "template": kubernetes_pool_template(TIERS[q]),
                                  "concurrency_limit": None}
        for q in (Quality.low, Quality.standard, Quality.high)
    }
