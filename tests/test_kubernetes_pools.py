"""The Kubernetes GPU pools: their templates render, through prefect-kubernetes' own job
configuration, into Jobs the Kubernetes API models accept, one GPU on the tier's nodes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any
from uuid import uuid4

import pytest
from kubernetes.client import ApiClient, V1Job
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from deployments.kubernetes_pools import NODE_LABEL, kubernetes_pool_template
from studio.tiers import TIERS, Quality
from tests.stack_helpers import REPO


def render(quality: Quality, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job manifest a Kubernetes worker would submit for a flow run on the tier's pool."""
    template = kubernetes_pool_template(TIERS[quality])
    config = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, values or {}))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="brave-fox"))
    return config.job_manifest


def as_v1_job(manifest: dict[str, Any]) -> V1Job:
    """The kubernetes client's own deserialisation (required fields are checked)."""
    return ApiClient().deserialize(json.dumps(manifest), "V1Job", "application/json")


def key_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        return {p for k, v in value.items() if v is not None
                for p in key_paths(v, f"{prefix}.{k}")} or {prefix}
    if isinstance(value, list):
        return {p for i, v in enumerate(value) for p in key_paths(v, f"{prefix}[{i}]")} or {prefix}
    return {prefix}


@pytest.mark.parametrize("quality", list(Quality))
def test_each_tier_renders_a_job_asking_one_gpu_on_its_nodes(quality: Quality) -> None:
    manifest = render(quality)
    job = as_v1_job(manifest)

    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.node_selector == {NODE_LABEL: f"k8s-{TIERS[quality].work_pool}"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert container.image == TIERS[quality].flow_image
    env = {e.name: e.value for e in container.env}
    assert env["QUALITY"] == quality.value and env["STUDIO_WORKSPACE"] == "/workspace"
    assert {m.mount_path for m in container.volume_mounts} == {"/workspace", "/tmp"}
    # Nothing the API models do not know (a misspelt key would vanish here, silently).
    assert key_paths(ApiClient().sanitize_for_serialization(job)) == key_paths(manifest)


def test_the_flow_run_container_is_non_root_with_a_read_only_root_filesystem() -> None:
    job = as_v1_job(render(Quality.standard))
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user == 1000
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.capabilities.drop == ["ALL"]
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["workspace"].persistent_volume_claim.claim_name == "generative-studio-workspace"
    assert volumes["tmp"].empty_dir is not None


def test_a_deployment_changes_gpus_node_selector_and_tolerations_through_variables() -> None:
    manifest = render(Quality.high, {
        "gpu_count": "2",
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "render",
                         "effect": "NoSchedule"}],
        "workspace_claim": "studio-ws",
    })
    pod = as_v1_job(manifest).spec.template.spec
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert pod.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [t.key for t in pod.tolerations] == ["dedicated"]
    assert pod.volumes[0].persistent_volume_claim.claim_name == "studio-ws"


def test_create_pools_creates_the_kubernetes_pools(prefect_server: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scripts.create_pools", "--kubernetes",
         "k8s-gpu-12gb", "k8s-gpu-16gb", "k8s-gpu-24gb"],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "work pool ready: k8s-gpu-12gb", "work pool ready: k8s-gpu-16gb",
        "work pool ready: k8s-gpu-24gb"]
