"""One GPU per worker: the GPU -> tier map (STUDIO_GPUS) and `studio worker --gpu N`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners.gpus import list_gpus
from studio.gpus import (
    Gpu,
    GpuMapError,
    default_gpu_map,
    describe_gpus,
    parse_gpu_map,
    resolve_gpu_map,
)
from studio.tiers import Quality
from tests.stack_helpers import Proc, wait_until

STUDIO = Path(sys.executable).parent / "studio"
TWO_CARDS = [Gpu(0, "NVIDIA RTX 4090", 24.0), Gpu(1, "NVIDIA RTX 4080", 16.0)]


def test_the_map_names_a_gpu_for_each_tier() -> None:
    assert parse_gpu_map("0=high, 1=standard,2=low") == {
        Quality.high: 0, Quality.standard: 1, Quality.low: 2,
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0=ultra", "unknown tier"),
        ("high", "write GPU=tier"),
        ("x=high", "must be an index"),
        ("0=high,1=high", "tier high is mapped twice"),
        ("0=high,0=low", "GPU 0 is mapped to high and low"),
    ],
)
def test_a_bad_map_is_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(GpuMapError, match=problem):
        parse_gpu_map(text)


@pytest.mark.parametrize(
    ("memory_gb", "tier"),
    [(80.0, Quality.high), (23.6, Quality.high), (16.0, Quality.standard),
     (12.0, Quality.low), (8.0, None)],
)
def test_one_gpu_without_a_map_serves_the_highest_tier_that_fits_it(
    memory_gb: float, tier: Quality | None
) -> None:
    expected = {tier: 3} if tier else {}
    assert default_gpu_map([Gpu(3, "card", memory_gb)]) == expected


def test_several_gpus_without_a_map_are_not_guessed() -> None:
    assert default_gpu_map(TWO_CARDS) == {}
    assert resolve_gpu_map("", TWO_CARDS) == {}


def test_a_map_naming_a_missing_gpu_names_the_gpus_there_are() -> None:
    with pytest.raises(GpuMapError) as err:
        resolve_gpu_map("0=high,5=low", TWO_CARDS)
    assert str(err.value) == (
        "STUDIO_GPUS maps low to GPU 5: no such GPU; the GPUs here are: "
        "GPU 0 (NVIDIA RTX 4090, 24 GB); GPU 1 (NVIDIA RTX 4080, 16 GB)"
    )


def test_a_worker_asked_for_a_gpu_that_does_not_exist_exits_naming_the_gpus_there_are() -> None:
    result = subprocess.run([str(STUDIO), "worker", "--tier", "standard", "--gpu", "7"],
                            capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert result.stderr.strip() == f"error: GPU 7: no such GPU; {describe_gpus(list_gpus())}"
    assert "ready" not in result.stdout


@pytest.fixture
def two_gpu_driver(tmp_path: Path) -> dict[str, str]:
    """This machine has no NVIDIA driver: a stand-in `nvidia-smi` lists two cards, as the real
    one answers `--query-gpu=index,name,memory.total --format=csv,noheader,nounits`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\n"
                    "echo '0, NVIDIA RTX 4090, 24564'\necho '1, NVIDIA RTX 4080, 16376'\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    return {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        "STUDIO_WORKSPACE": str(tmp_path / "workspace"),
        "PYTHONUNBUFFERED": "1",
    }


def _ready_line(env: dict[str, str], log: Path, *args: str) -> str:
    worker = Proc([str(STUDIO), "worker", *args], env, log)
    try:
        return wait_until(
            lambda: next((line for line in worker.output().splitlines() if "ready:" in line), ""),
            120, "the worker's ready line")
    finally:
        worker.kill()


def test_the_worker_process_sees_only_the_gpu_it_was_given(
    two_gpu_driver: dict[str, str], tmp_path: Path
) -> None:
    line = _ready_line(two_gpu_driver, tmp_path / "worker.log", "--tier", "standard", "--gpu", "1")
    assert line.endswith("on CUDA_VISIBLE_DEVICES=1")


def test_the_worker_takes_its_gpu_from_the_map_when_none_is_given(
    two_gpu_driver: dict[str, str], tmp_path: Path
) -> None:
    env = {**two_gpu_driver, "STUDIO_GPUS": "0=standard,1=high"}
    line = _ready_line(env, tmp_path / "worker.log", "--tier", "high")
    assert line.endswith("on CUDA_VISIBLE_DEVICES=1")


def test_a_local_batch_renders_on_its_tiers_gpu_from_the_map() -> None:
    # In a fresh interpreter, as a flow run starts: pinning refuses once torch is imported, and
    # other tests of this session import it.
    code = """
from runners.gpus import apply_gpu_map
from studio.gpus import Gpu
from studio.tiers import Quality
cards = [Gpu(0, "NVIDIA RTX 4090", 24.0), Gpu(1, "NVIDIA RTX 4080", 16.0)]
env = {"STUDIO_GPUS": "0=high,1=standard"}
print(apply_gpu_map(Quality.standard, env, cards).index, env["CUDA_VISIBLE_DEVICES"],
      env["CUDA_DEVICE_ORDER"])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "PCI_BUS_ID"]


def test_pinning_a_gpu_after_torch_loaded_is_refused() -> None:
    code = """
import torch
from runners.gpus import pin_gpu
pin_gpu(0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0
    assert "pin_gpu must run before torch is imported" in result.stderr


@pytest.mark.parametrize("env", [
    {},  # no map: nothing is assumed
    {"STUDIO_GPUS": "0=high"},  # the map has no GPU for this tier
    {"STUDIO_GPUS": "0=high,1=standard", "CUDA_VISIBLE_DEVICES": "0"},  # already chosen
])
def test_a_local_batch_leaves_the_gpus_alone_without_a_mapping_for_it(env: dict) -> None:
    from runners.gpus import apply_gpu_map

    before = dict(env)
    assert apply_gpu_map(Quality.standard, env, TWO_CARDS) is None
    assert env == before


def _driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *cards: str) -> None:
    bin_dir = tmp_path / "driver"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo '{card}'\n" for card in cards))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_make_up_on_one_16_gb_card_starts_only_the_tier_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scripts.stack_gpus import plan_gpu_workers

    _driver(tmp_path, monkeypatch, "0, NVIDIA RTX 4080, 16376")
    tiers, line = plan_gpu_workers(["low", "standard", "high"], environ={})
    assert tiers == ["standard"]
    assert line == ("  GPUs          0=standard (the tier that fits); "
                    "no GPU for low, high: no worker (set STUDIO_GPUS)")


def test_make_up_starts_a_worker_per_gpu_of_the_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scripts.stack_gpus import plan_gpu_workers

    _driver(tmp_path, monkeypatch, "0, NVIDIA RTX 4090, 24564", "1, NVIDIA RTX 4080, 16376")
    tiers, line = plan_gpu_workers(["low", "standard", "high"],
                                   environ={"STUDIO_GPUS": "1=standard,0=high"})
    assert tiers == ["standard", "high"]
    assert line.startswith("  GPUs          0=high,1=standard (STUDIO_GPUS)")
    with pytest.raises(SystemExit, match="STUDIO_GPUS: STUDIO_GPUS maps low to GPU 2: no such"):
        plan_gpu_workers(["low"], environ={"STUDIO_GPUS": "2=low"})
