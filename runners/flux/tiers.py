"""Each quality tier's diffusers settings, keyed by the contract's Quality (spec 4.1).

Torch-free on purpose: the entry point reads the tier defaults to validate a request before it
imports torch. ``runners/flux/optimize.py`` turns these settings into diffusers/torch calls.

| QUALITY  | model          | weights                          | offload (CUDA) | steps | cfg |
| -------- | -------------- | -------------------------------- | -------------- | ----- | --- |
| low      | FLUX.1-schnell | fp8 storage, bf16 compute        | group, streams | 4     | 0   |
| standard | FLUX.1-dev     | fp8 (torchao fp8 GEMMs on sm89+) | none           | 28    | 3.5 |
| high     | FLUX.1-dev     | bf16                             | none           | 28    | 3.5 |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from runners.flux.contract import Quality, parse_quality

# T5 modules that must keep their dtype under fp8 layerwise casting (embedding lookups, the
# relative position bias and the FF output projection overflow or break in fp8).
T5_FP8_SKIP = ("norm", "shared", "embed_tokens", "relative_attention_bias", "wo")


@dataclass(frozen=True)
class TierSettings:
    """What one QUALITY value means to diffusers and torch."""

    quality: Quality
    variant: str  # folder under Library/AI_Models/flux/ and the Hub repo name
    repo_id: str
    pipeline_id: str
    image: str
    compute_dtype: str  # dtype the math runs in
    storage_dtype: str | None  # weights kept in this dtype between uses; None = compute_dtype
    fp8_method: str  # "layerwise" (diffusers enable_layerwise_casting) or "none"
    fp8_components: tuple[str, ...]  # pipeline components stored in fp8
    offload: str  # "none" | "model" | "group" (group offload with CUDA streams); CUDA only
    default_steps: int
    max_steps: int  # more steps than this are clamped (reported), e.g. schnell is 4-step distilled
    default_cfg: float
    guidance_embeds: bool  # FLUX.1-dev has distilled guidance; schnell has none
    max_sequence_length: int  # T5 tokens
    default_size: int = 1024
    # GPU-only speed settings (optimize.py applies them only when CUDA is present).
    gpu_fp8_compute: bool = False  # torchao Float8DynamicActivationFloat8WeightConfig on sm89+
    compile: bool = False  # torch.compile of the transformer's repeated blocks, cached on disk
    fuse_qkv: bool = False  # fused QKV projections (+memory: the unfused weights stay for LoRA)
    # Keep CLIP/T5 off the GPU between encodes when the card has less memory than this (GiB).
    release_text_encoders_below_gib: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


TIERS: dict[Quality, TierSettings] = {
    Quality.low: TierSettings(
        quality=Quality.low,
        variant="FLUX.1-schnell",
        repo_id="black-forest-labs/FLUX.1-schnell",
        pipeline_id="flux-schnell-fp8",
        image="gms-flux:1.0-low-vram",
        compute_dtype="bfloat16",
        storage_dtype="float8_e4m3fn",
        fp8_method="layerwise",
        fp8_components=("transformer", "text_encoder_2"),
        offload="group",
        default_steps=4,
        max_steps=4,
        default_cfg=0.0,
        guidance_embeds=False,
        max_sequence_length=256,
    ),
    Quality.standard: TierSettings(
        quality=Quality.standard,
        variant="FLUX.1-dev",
        repo_id="black-forest-labs/FLUX.1-dev",
        pipeline_id="flux-dev-fp8",
        image="gms-flux:1.0-standard",
        compute_dtype="bfloat16",
        storage_dtype="float8_e4m3fn",
        fp8_method="layerwise",
        fp8_components=("transformer", "text_encoder_2"),
        offload="none",
        default_steps=28,
        max_steps=100,
        default_cfg=3.5,
        guidance_embeds=True,
        max_sequence_length=512,
        gpu_fp8_compute=True,
        compile=True,
        release_text_encoders_below_gib=40.0,
    ),
    Quality.high: TierSettings(
        quality=Quality.high,
        variant="FLUX.1-dev",
        repo_id="black-forest-labs/FLUX.1-dev",
        pipeline_id="flux-dev-bf16",
        image="gms-flux:1.0-high-fidelity",
        compute_dtype="bfloat16",
        storage_dtype=None,
        fp8_method="none",
        fp8_components=(),
        offload="none",
        default_steps=28,
        max_steps=100,
        default_cfg=3.5,
        guidance_embeds=True,
        max_sequence_length=512,
        compile=True,
        fuse_qkv=True,
        release_text_encoders_below_gib=40.0,
    ),
}


def get_tier(quality: Quality | str) -> TierSettings:
    """The settings of one tier; a QUALITY text is parsed (an unknown one is bad input)."""
    return TIERS[parse_quality(quality)]
