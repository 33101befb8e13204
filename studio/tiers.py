"""The quality-tier table (spec 4.1): the one place that maps a project's quality to hardware.

One row per tier. What the runner needs of a tier (model variant, pipeline id, image, dtypes,
steps) is written once, in the runner's settings (``runners/flux/tiers.py``, which the runner
image carries without the rest of the project); a row here adds what the studio needs (GPU
memory, work pool, description) and reads the rest from them. ``Quality`` is the runner
contract's: one type from the project file to the runner's QUALITY.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from runners.flux.contract import Quality
from runners.flux.tiers import TIERS as RUNNER_TIERS
from runners.flux.tiers import TierSettings

__all__ = ["TIERS", "FallbackPolicy", "Quality", "Tier", "fallback_order", "tier_for_pipeline"]


class FallbackPolicy(StrEnum):
    """When a click may render on a lower tier than the project asks for (spec 3.1)."""

    never = "never"  # always wait for the requested tier
    when_offline = "when_offline"  # only once the requested tier has been offline a while
    when_busy = "when_busy"  # also when its worker is busy and a lower tier's is idle


class Tier(BaseModel):
    model_config = ConfigDict(frozen=True)

    quality: Quality
    vram_gb: int
    work_pool: str
    description: str

    @property
    def runner(self) -> TierSettings:
        """The runner's settings of this tier."""
        return RUNNER_TIERS[self.quality]

    @property
    def variant(self) -> str:
        return self.runner.variant

    @property
    def pipeline_id(self) -> str:
        return self.runner.pipeline_id

    @property
    def image(self) -> str:
        """The runner image of this tier."""
        return self.runner.image

    @property
    def flow_image(self) -> str:
        """The tier's flow-run image (Prefect + the project + the runner): `gms-studio:<tag>`
        with the runner image's tag."""
        return f"gms-studio:{self.image.split(':', 1)[1]}"


TIERS: dict[Quality, Tier] = {
    Quality.low: Tier(
        quality=Quality.low,
        vram_gb=12,
        work_pool="gpu-12gb",
        description="FLUX.1-schnell, FP8 weights, CPU offload, 4 steps (~12 GB)",
    ),
    Quality.standard: Tier(
        quality=Quality.standard,
        vram_gb=16,
        work_pool="gpu-16gb",
        description="FLUX.1-dev, FP8 weights (~16 GB)",
    ),
    Quality.high: Tier(
        quality=Quality.high,
        vram_gb=24,
        work_pool="gpu-24gb",
        description="FLUX.1-dev, 16-bit weights (24 GB+)",
    ),
}

# Highest first: a tier falls back to the ones after it.
_ORDER = [Quality.high, Quality.standard, Quality.low]


def fallback_order(quality: Quality) -> list[Quality]:
    """The requested tier, then each lower tier, in the order the dispatcher tries them."""
    return _ORDER[_ORDER.index(quality) :]


def tier_for_pipeline(pipeline_id: str) -> Tier:
    for tier in TIERS.values():
        if tier.pipeline_id == pipeline_id:
            return tier
    known = [t.pipeline_id for t in TIERS.values()]
    raise KeyError(f"unknown pipeline id {pipeline_id!r}; known: {known}")
