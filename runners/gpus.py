"""Finding the GPUs of this machine and pinning a process to one, before torch loads.

The GPU list comes from `nvidia-smi` (the driver's numbering, which `CUDA_DEVICE_ORDER=PCI_BUS_ID`
makes CUDA use too); no nvidia-smi means no NVIDIA GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import MutableMapping

from studio.gpus import Gpu, check_gpu_index, resolve_gpu_map
from studio.tiers import Quality


def list_gpus() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []  # a driver that does not answer serves no take either
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            gpus.append(Gpu(index=int(parts[0]), name=parts[1],
                            memory_gb=float(parts[2]) / 1024 if parts[2] else 0.0))
    return gpus


def pin_gpu(index: int, environ: MutableMapping[str, str] | None = None,
            gpus: list[Gpu] | None = None) -> Gpu:
    """Makes GPU `index` the only one this process (and its children) sees.

    Raises GpuMapError naming the GPUs there are when the index does not exist.
    """
    if "torch" in sys.modules:  # CUDA reads the variable once, when torch initialises it
        raise RuntimeError("pin_gpu must run before torch is imported")
    gpu = check_gpu_index(index, list_gpus() if gpus is None else gpus)
    env = os.environ if environ is None else environ
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = str(gpu.index)
    return gpu


def gpu_map(environ: MutableMapping[str, str] | None = None,
            gpus: list[Gpu] | None = None) -> dict[Quality, int]:
    """STUDIO_GPUS resolved against this machine's GPUs (default: see studio.gpus)."""
    env = os.environ if environ is None else environ
    return resolve_gpu_map(env.get("STUDIO_GPUS"), list_gpus() if gpus is None else gpus)


def apply_gpu_map(quality: Quality, environ: MutableMapping[str, str] | None = None,
                  gpus: list[Gpu] | None = None) -> Gpu | None:
    """Pins a batch (a flow run of the local pool) to its tier's GPU in STUDIO_GPUS, so it never
    loads a second model on a card a warm worker fills. Does nothing without a configured map,
    or when something already chose the GPUs (CUDA_VISIBLE_DEVICES set, e.g. by a container's
    device request or `studio worker --gpu`)."""
    env = os.environ if environ is None else environ
    if not env.get("STUDIO_GPUS", "").strip() or "CUDA_VISIBLE_DEVICES" in env:
        return None
    index = gpu_map(env, gpus).get(quality)
    return None if index is None else pin_gpu(index, env, gpus)
