"""Which GPU serves which quality tier: one map, read by the warm task workers (`--gpu N`), the
local batch pool, the Docker pools (`device_ids`) and the Kubernetes pools.

`STUDIO_GPUS="0=high,1=standard,2=low"`: GPU index (as `nvidia-smi` numbers them) = tier.
Unset, a one-GPU machine gets the highest tier whose VRAM need fits that card.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.tiers import TIERS, Quality, fallback_order


class GpuMapError(ValueError):
    pass


@dataclass(frozen=True)
class Gpu:
    """A GPU as the driver lists it."""

    index: int
    name: str
    memory_gb: float

    def label(self) -> str:
        return f"GPU {self.index} ({self.name}, {self.memory_gb:.0f} GB)"


def parse_gpu_map(text: str) -> dict[Quality, int]:
    """`"0=high,1=standard"` -> {high: 0, standard: 1}; one tier per GPU, one GPU per tier."""
    mapping: dict[Quality, int] = {}
    used: dict[int, Quality] = {}
    for raw in text.replace(";", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        index_text, sep, tier_text = entry.partition("=")
        if not sep:
            raise GpuMapError(f"{entry!r}: write GPU=tier, e.g. 0=high")
        try:
            index = int(index_text.strip())
        except ValueError:
            raise GpuMapError(f"{entry!r}: the GPU must be an index (0, 1, ...)") from None
        if index < 0:
            raise GpuMapError(f"{entry!r}: the GPU index must not be negative")
        try:
            quality = Quality(tier_text.strip())
        except ValueError:
            tiers = ", ".join(q.value for q in Quality)
            raise GpuMapError(f"{entry!r}: unknown tier; choose one of {tiers}") from None
        if quality in mapping:
            raise GpuMapError(f"tier {quality.value} is mapped twice (GPUs {mapping[quality]} "
                              f"and {index}): one warm worker per tier")
        if index in used:
            raise GpuMapError(f"GPU {index} is mapped to {used[index].value} and "
                              f"{quality.value}: each would load its model on the same card")
        mapping[quality] = index
        used[index] = quality
    return mapping


def format_gpu_map(mapping: dict[Quality, int]) -> str:
    return ",".join(f"{index}={q.value}" for q, index in sorted(mapping.items(),
                                                                 key=lambda kv: kv[1]))


def tier_that_fits(memory_gb: float) -> Quality | None:
    """The highest tier whose VRAM need a card of `memory_gb` meets."""
    for quality in fallback_order(Quality.high):
        if TIERS[quality].vram_gb <= memory_gb + 0.5:  # cards report a little under nominal
            return quality
    return None


def default_gpu_map(gpus: list[Gpu]) -> dict[Quality, int]:
    """No map configured: a one-GPU machine serves the one tier that fits its card; otherwise
    nothing is assumed (several GPUs need STUDIO_GPUS)."""
    if len(gpus) != 1:
        return {}
    quality = tier_that_fits(gpus[0].memory_gb)
    return {quality: gpus[0].index} if quality else {}


def resolve_gpu_map(configured: str | None, gpus: list[Gpu]) -> dict[Quality, int]:
    """The configured map checked against the GPUs there are, or the default for them."""
    if not configured or not configured.strip():
        return default_gpu_map(gpus)
    mapping = parse_gpu_map(configured)
    for quality, index in mapping.items():
        check_gpu_index(index, gpus, what=f"STUDIO_GPUS maps {quality.value} to GPU {index}")
    return mapping


def describe_gpus(gpus: list[Gpu]) -> str:
    if not gpus:
        return "this machine has no NVIDIA GPU (nvidia-smi lists none)"
    return "the GPUs here are: " + "; ".join(g.label() for g in gpus)


def check_gpu_index(index: int, gpus: list[Gpu], what: str | None = None) -> Gpu:
    """The GPU with that index, or an error naming the GPUs there are."""
    for gpu in gpus:
        if gpu.index == index:
            return gpu
    raise GpuMapError(f"{what or f'GPU {index}'}: no such GPU; {describe_gpus(gpus)}")
