"""Each quality tier's diffusers settings, in one place (spec 4.1), and the CFG -> FLUX mapping.

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

from runners.flux.errors import BadInput

QUALITIES = ("low", "standard", "high")
DEFAULT_QUALITY = "standard"

# T5 modules that must keep their dtype under fp8 layerwise casting (embedding lookups, the
# relative position bias and the FF output projection overflow or break in fp8).
T5_FP8_SKIP = ("norm", "shared", "embed_tokens", "relative_attention_bias", "wo")


@dataclass(frozen=True)
class TierSettings:
    """What one QUALITY value means to diffusers and torch."""

    quality: str
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


TIERS: dict[str, TierSettings] = {
    "low": TierSettings(
        quality="low",
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
    "standard": TierSettings(
        quality="standard",
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
    "high": TierSettings(
        quality="high",
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


def get_tier(quality: str) -> TierSettings:
    """The settings of one QUALITY value; an unknown value is bad input."""
    try:
        return TIERS[quality]
    except KeyError:
        raise BadInput(f"QUALITY must be one of {', '.join(QUALITIES)}; got {quality!r}") from None


def has_negative(negative_prompt: str | None) -> bool:
    return bool(negative_prompt and negative_prompt.strip())


def guidance_kwargs(tier: TierSettings, cfg_scale: float, negative_prompt: str | None) -> dict:
    """Map the node's one "CFG scale" onto FluxPipeline's two guidance knobs.

    * No negative prompt: FLUX.1-dev is guidance-distilled, so CFG scale is ``guidance_scale``
      (one transformer pass per step). FLUX.1-schnell has no guidance input: 0.0, ignored.
    * A negative prompt only acts through true classifier-free guidance
      (``true_cfg_scale > 1``, two transformer passes per step: about 2x the time). Then CFG scale
      is ``true_cfg_scale`` and dev's distilled guidance is set to 1.0 (neutral), so the prompt is
      not pushed twice. A negative prompt with CFG scale <= 1 would do nothing: it is refused
      rather than silently ignored.
    """
    if has_negative(negative_prompt):
        if not cfg_scale > 1.0:
            raise BadInput(
                f"a negative prompt needs CFG_SCALE > 1 (true CFG); got {cfg_scale}. "
                "Raise CFG_SCALE or clear NEGATIVE_PROMPT."
            )
        return {
            "guidance_scale": 1.0 if tier.guidance_embeds else 0.0,
            "true_cfg_scale": float(cfg_scale),
        }
    return {
        "guidance_scale": float(cfg_scale) if tier.guidance_embeds else 0.0,
        "true_cfg_scale": 1.0,
    }


def uses_true_cfg(kwargs: dict) -> bool:
    """Whether a guidance_kwargs() result runs two transformer passes per step."""
    return float(kwargs.get("true_cfg_scale", 1.0)) > 1.0
