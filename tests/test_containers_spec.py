"""The container-per-take strategy as configured, without an engine: paths, names, hardening.

The same strategy runs through a real engine in tests/test_containers_engine.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runners.flux.contract import FluxRequest
from runners.mount import WorkspaceMount
from runners.registry import docker_strategy
from runners.strategies import container_name
from runners.take_request import take_request
from studio.jobs import GenerationParams, TakeJob
from studio.manifest import Shot
from studio.tiers import TIERS, Quality


def test_a_workspace_path_maps_to_the_volume_and_back(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    take = root / "Projects" / "P" / "03_Renders" / "SCENE_01" / "SHOT-010_v01_take01.png"
    mount = WorkspaceMount(root)

    inside = mount.to_container(take)

    assert inside == "/workspace/Projects/P/03_Renders/SCENE_01/SHOT-010_v01_take01.png"
    assert mount.to_host(inside) == take.resolve()
    assert mount.to_container(root) == "/workspace"
    assert mount.to_host("/elsewhere/x.png") == Path("/elsewhere/x.png")


def test_a_path_outside_the_workspace_cannot_be_handed_to_a_container(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the workspace .* only the workspace volume"):
        WorkspaceMount(tmp_path / "ws").to_container(tmp_path / "models" / "FLUX.1-dev")


def _job() -> TakeJob:
    return TakeJob(
        project_id="Project_Odyssey", node_id="shot15", take_id="t1", take_number=4,
        shot=Shot(scene="SCENE_01", shot="SHOT_015", version="v01"),
        output_path="03_Renders/SCENE_01/SHOT_015/SHOT-015_v01_take04.png",
        quality_requested=Quality.standard, quality_used=Quality.standard,
        pipeline_id="flux-dev-fp8",
        params=GenerationParams(prompt="a fox", seed=3, steps=2, cfg_scale=3.5, width=256,
                                height=256),
    )


def _request(root: Path) -> FluxRequest:
    return FluxRequest(prompt="a fox", output_path=root / "Projects" / "A" / "x.png",
                       workspace=root)


def test_the_runner_env_for_a_container_carries_only_container_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STUDIO_MODELS_ROOT", raising=False)
    root = tmp_path / "ws"
    project = root / "Projects" / "Project_Odyssey"
    request = take_request(_job(), workspace_root=root, project_dir=project,
                           preview_path=project / "p.preview.png")

    env = docker_strategy("flux-dev-fp8", {"STUDIO_CONTAINER_GPUS": "none"}).container_spec(
        request, "gms-flux-x")["environment"]

    assert env["OUTPUT_PATH"] == (
        "/workspace/Projects/Project_Odyssey/03_Renders/SCENE_01/SHOT_015/SHOT-015_v01_take04.png")
    assert env["MODEL_DIR"] == "/workspace/Library/AI_Models/flux/FLUX.1-dev"
    assert env["PREVIEW_PATH"] == "/workspace/Projects/Project_Odyssey/p.preview.png"
    assert env["STUDIO_WORKSPACE"] == "/workspace"
    assert not any(str(tmp_path) in value for value in env.values())


def test_each_take_gets_its_own_container_name() -> None:
    request = FluxRequest(prompt="a fox", output_path=Path(
        "/workspace/Projects/A/03_Renders/S/SHOT_010/SHOT-010_v01_take01.png"))
    names = {container_name(request) for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("gms-flux-shot-010-v01-take01-") for n in names)


def test_the_runner_container_is_non_root_read_only_and_offline() -> None:
    strategy = docker_strategy("flux-dev-fp8", {"STUDIO_CONTAINER_GPUS": "none",
                                                "STUDIO_WORKSPACE": "/srv/ws",
                                                "STUDIO_WORKSPACE_VOLUME": "/srv/ws"})
    spec = strategy.container_spec(_request(Path("/srv/ws")), "gms-flux-x")

    assert spec["image"] == "gms-flux:1.0-standard"
    assert spec["user"] == "1000:1000"
    assert spec["read_only"] is True and set(spec["tmpfs"]) == {"/tmp"}
    assert spec["security_opt"] == ["no-new-privileges"] and spec["cap_drop"] == ["ALL"]
    assert spec["network_mode"] == "none"
    assert spec["volumes"] == {"/srv/ws": {"bind": "/workspace", "mode": "rw"}}
    assert "device_requests" not in spec


@pytest.mark.parametrize(
    ("setting", "gpus", "device_ids"),
    [("map", "", None), ("all", "", None), ("2,3", "", ["2", "3"])],
)
def test_the_runner_container_asks_for_the_configured_gpus(
    setting: str, gpus: str, device_ids: list[str] | None
) -> None:
    env = {"STUDIO_CONTAINER_GPUS": setting, "STUDIO_GPUS": gpus}
    spec = docker_strategy("flux-dev-fp8", env).container_spec(_request(Path("/srv/ws")), "n")
    (request,) = spec["device_requests"]
    assert request["DeviceIDs"] == (device_ids or [])
    assert request["Count"] == (0 if device_ids else -1)


def test_a_gpu_pool_pins_the_gpu_the_map_gives_its_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from deployments.pools import docker_pool_template

    monkeypatch.setenv("STUDIO_GPUS", "0=high,1=standard,2=low")
    for quality, device in ((Quality.high, "0"), (Quality.standard, "1"), (Quality.low, "2")):
        config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
            docker_pool_template(TIERS[quality]), {}))
        assert config.container_create_kwargs["device_requests"] == [
            {"driver": "nvidia", "device_ids": [device], "capabilities": [["gpu"]]}]


def test_a_deployment_drops_the_gpu_request_but_keeps_the_hardening() -> None:
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from deployments.pools import HARDENING, docker_pool_template

    config = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(
        docker_pool_template(TIERS[Quality.standard]), {"device_requests": []}))
    assert config.container_create_kwargs == {**HARDENING, "device_requests": []}


def test_the_advertised_api_address_and_a_registry_reach_the_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.pools import docker_pool_template

    monkeypatch.setenv("STUDIO_ADVERTISED_PREFECT_API_URL", "http://10.0.0.5:4200/api")
    monkeypatch.setenv("STUDIO_IMAGE_REGISTRY", "registry.example.com/studio")
    props = docker_pool_template(TIERS[Quality.low])["variables"]["properties"]
    assert props["env"]["default"]["PREFECT_API_URL"] == "http://10.0.0.5:4200/api"
    assert props["image"]["default"] == "registry.example.com/studio/gms-studio:1.0-low-vram"
    assert props["image_pull_policy"]["default"] == "IfNotPresent"
