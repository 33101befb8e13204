"""The node's one "CFG scale" mapped onto FluxPipeline's two guidance knobs."""

from __future__ import annotations

from runners.flux.contract import BadInput
from runners.flux.tiers import TierSettings


def has_negative(negative_prompt: str | None) -> bool:
    return bool(negative_prompt and negative_prompt.strip())


def guidance_kwargs(tier: TierSettings, cfg_scale: float, negative_prompt: str | None) -> dict:
    """``guidance_scale`` and ``true_cfg_scale`` for one take.

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
