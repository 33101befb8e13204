"""A take's LoRAs on the cached pipeline: loaded with their weights, then unloaded again."""

from __future__ import annotations

from collections.abc import Callable

from runners.flux.contract import BadInput
from runners.flux.pipeline_cache import LoadedPipeline
from runners.flux.plan import Plan


def apply_loras(entry: LoadedPipeline, plan: Plan, progress: Callable[[int, str], None]) -> None:
    pipe = entry.pipe
    if entry.settings.get("fused_qkv"):
        pipe.transformer.unfuse_qkv_projections()  # LoRAs target the unfused to_q/to_k/to_v
    names = []
    for i, lora in enumerate(plan.loras):
        progress(11, f"Loading {lora.kind} LoRA {lora.file.name} (weight {lora.weight:g})")
        name = f"take_lora_{i}"
        try:
            pipe.load_lora_weights(str(lora.file), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise BadInput(
                f"LoRA {lora.path} does not fit {plan.tier.variant} (not a FLUX LoRA?): {exc}"
            ) from exc
        # diffusers only warns when no key matches a layer: such a file would silently do nothing.
        if not any(name in found for found in pipe.get_list_adapters().values()):
            raise BadInput(
                f"LoRA {lora.path} does not fit {plan.tier.variant}: none of its weights "
                "matches a FLUX layer (a LoRA for another model?)"
            )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.weight for lora in plan.loras])
    # Prompt embeddings are cached per LoRA set: a LoRA may patch the text encoders too.
    entry.lora_signature = tuple(
        (str(lo.file), lo.file.stat().st_mtime_ns, lo.weight) for lo in plan.loras
    )


def reset_loras(entry: LoadedPipeline) -> None:
    """Leave the cached pipeline exactly as loaded for the next take."""
    entry.pipe.unload_lora_weights()
    entry.lora_signature = ()
    if entry.settings.get("fused_qkv"):
        entry.pipe.transformer.fuse_qkv_projections()
