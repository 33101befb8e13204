"""The quality-tier table (spec 4.1): the one place that maps a project's quality to hardware."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Quality(StrEnum):
    low = "low"
    standard = "standard"
    high = "high"


class FallbackPolicy(StrEnum):
    """When a click may render on a lower tier than the project asks for (spec 3.1)."""

    never = "never"  # always wait for the requested tier
    when_offline = "when_offline"  # only once the requested tier has been offline a while
    when_busy = "when_busy"  # also when its worker is busy and a lower tier's is idle


class Tier(BaseModel):
    model_config = ConfigDict(frozen=True)

    quality: Quality
    image: str
    variant: str
    precision: str
    vram_gb: int
    cpu_offload: bool
    work_pool: str
    pipeline_id: str
    description: str

    @property
    def flow_image(self) -> str:
        """The tier's flow-run image (Prefect + the project + the runner): `gms-studio:<tag>`
        with the runner image's tag."""
        return f"gms-studio:{self.image.split(':', 1)[1]}"


TIERS: dict[Quality, Tier] = {
    Quality.low: Tier(
        quality=Quality.low,
        image="gms-flux:1.0-low-vram",
        variant="FLUX.1-schnell",
        precision="fp8",
        vram_gb=12,
        cpu_offload=True,
        work_pool="gpu-12gb",
        pipeline_id="flux-schnell-fp8",
        description="FLUX.1-schnell, FP8 weights, CPU offload, 4 steps (~12 GB)",
    ),
    Quality.standard: Tier(
        quality=Quality.standard,
        image="gms-flux:1.0-standard",
        variant="FLUX.1-dev",
        precision="fp8",
        vram_gb=16,
        cpu_offload=False,
        work_pool="gpu-16gb",
        pipeline_id="flux-dev-fp8",
        description="FLUX.1-dev, FP8 weights (~16 GB)",
    ),
    Quality.high: Tier(
        quality=Quality.high,
        image="gms-flux:1.0-high-fidelity",
        variant="FLUX.1-dev",
        precision="bf16",
        vram_gb=24,
        cpu_offload=False,
        work_pool="gpu-24gb",
        pipeline_id="flux-dev-bf16",
        description="FLUX.1-dev, 16-bit weights (24 GB+)",
    ),
}

# Highest first: a tier falls back to the ones after it.
_ORDER = [Quality.high, Quality.standard, Quality.low]


def fallback_order(quality: Quality | str) -> list[Quality]:
    """The requested tier, then each lower tier, in the order the dispatcher tries them."""
    q = Quality(quality)
    return _ORDER[_ORDER.index(q) :]


def tier_for_pipeline(pipeline_id: str) -> Tier:
    for tier in TIERS.values():
        if tier.pipeline_id == pipeline_id:
            return tier
    known = [t.pipeline_id for t in TIERS.values()]
    raise KeyError(f"unknown pipeline id {pipeline_id!r}; known: {known}")
