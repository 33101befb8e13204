"""Apply a tier's settings (tiers.py) to a loaded FluxPipeline, with what diffusers/torch offer.

Everywhere (CPU included, so tests exercise it): fp8 *storage* through diffusers layerwise
casting (weights kept in float8_e4m3fn, cast to the compute dtype one layer at a time).

Only with CUDA (none of it can run on a CPU-only machine; see docs/flux.md):
* torchao ``Float8DynamicActivationFloat8WeightConfig`` (real fp8 GEMMs) instead of layerwise
  casting on sm89+ (Ada/Hopper) when torchao is installed: smaller *and* faster;
* offload: group offload with CUDA streams (low tier), or model CPU offload as the fallback;
* fused QKV projections, ``torch.compile`` of the repeated transformer blocks with an on-disk
  compile cache (so a worker pays the compile once, not per start);
* text encoders released from the GPU between encodes on cards below a memory threshold
  (the runner caches prompt embeddings, so a repeated prompt does not need them at all).

``FLUX_OPTIMIZE=0`` turns the CUDA-only speed settings off (debugging).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from runners.flux.tiers import T5_FP8_SKIP, TierSettings


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_speedups_enabled() -> bool:
    return os.environ.get("FLUX_OPTIMIZE", "1").strip().lower() not in ("0", "false", "no", "off")


def has_torchao() -> bool:
    return importlib.util.find_spec("torchao") is not None


def _mark_compute_dtype(module: torch.nn.Module,
    storage: torch.dtype, compute: torch.dtype
) -> None:
    # peft creates LoRA layers in the dtype of the layer they wrap; on an fp8-stored layer that
    # would quantize the LoRA itself to fp8. peft honours a ``compute_dtype`` attribute (as for
    # bitsandbytes layers), so LoRA weights are created and loaded in the compute dtype.
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype == storage:
            sub.compute_dtype = compute


def _layerwise_fp8(pipe: Any, tier: TierSettings, component: str) -> str:
    from diffusers.hooks import apply_layerwise_casting

    module = getattr(pipe, component, None)
    if module is None:
        return "absent"
    storage = torch_dtype(tier.storage_dtype or tier.compute_dtype)
    compute = torch_dtype(tier.compute_dtype)
    if hasattr(module, "enable_layerwise_casting"):  # diffusers models: their own skip lists
        module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
    else:  # transformers' T5: skip the modules that break in fp8
        apply_layerwise_casting(module, storage, compute, skip_modules_pattern=T5_FP8_SKIP)
    _mark_compute_dtype(module, storage, compute)
    return f"layerwise {tier.storage_dtype} storage, {tier.compute_dtype} compute"


def _torchao_fp8(module: torch.nn.Module) -> None:
    from torchao.quantization import (  # optional dependency: only in the GPU image
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def set_compile_cache(workspace: Path | None) -> str | None:
    """Point inductor's cache at the shared workspace unless the operator chose a folder."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    if workspace is None:
        return None
    folder = workspace / "Library" / ".cache" / "torchinductor"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return str(folder)


def apply_tier(
    pipe: Any, tier: TierSettings, device: str, *, workspace: Path | None = None
) -> dict[str, Any]:
    """Apply ``tier`` to ``pipe`` (loaded in the compute dtype, on the CPU) and place it on
    ``device``. Returns what was decided, component by component, for logs, tests and benches."""
    cuda = device == "cuda"
    speed = cuda and gpu_speedups_enabled()
    settings: dict[str, Any] = {
        "quality": tier.quality,
        "variant": tier.variant,
        "device": device,
        "compute_dtype": tier.compute_dtype,
        "fused_qkv": False,
        "compile": False,
        "release_text_encoders": False,
    }
    pipe.set_progress_bar_config(disable=True)

    # Fuse before any fp8 conversion, so the fused projections are the ones stored/quantized.
    if speed and tier.fuse_qkv:
        pipe.transformer.fuse_qkv_projections()
        settings["fused_qkv"] = True

    storage: dict[str, str] = {}
    for component in tier.fp8_components:
        if component == "transformer" and speed and tier.gpu_fp8_compute and has_torchao():
            if torch.cuda.get_device_capability() >= (8, 9):
                pipe.transformer.to(device)
                _torchao_fp8(pipe.transformer)
                storage[component] = "torchao float8 dynamic activation + weight (fp8 GEMMs)"
                continue
        if tier.fp8_method == "layerwise":
            storage[component] = _layerwise_fp8(pipe, tier, component)
    settings["fp8"] = storage

    # The FLUX VAE in bf16 is fine on GPUs; on a CPU bf16 convolutions are ~50x slower than
    # float32, so the VAE (a small part of the model) runs in float32 there.
    if not cuda and pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    settings["vae_dtype"] = str(pipe.vae.dtype).removeprefix("torch.")

    settings["offload"] = _place(pipe, tier, device, settings)

    if speed and tier.compile:
        settings["compile_cache"] = set_compile_cache(workspace)
        if hasattr(pipe.transformer, "compile_repeated_blocks"):
            # Regional compilation: same speed-up as compiling the whole model, far shorter compile.
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
        else:
            pipe.transformer.compile()
        settings["compile"] = True

    settings["dtypes"] = component_dtypes(pipe)
    return settings


def _place(pipe: Any, tier: TierSettings, device: str, settings: dict[str, Any]) -> str:
    if device != "cuda":
        pipe.to(device)
        if tier.offload != "none":
            return f"skipped ({tier.offload} offload needs CUDA; everything stays on the CPU)"
        return "none"
    if tier.offload == "group" and hasattr(pipe, "enable_group_offload"):
        # Leaf-level groups with a CUDA stream prefetch the next layer while one computes.
        pipe.enable_group_offload(
            onload_device=torch.device("cuda"),
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
        )
        return "group (leaf level, CUDA stream prefetch)"
    if tier.offload in ("group", "model"):
        pipe.enable_model_cpu_offload()
        return "model cpu offload"
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if total_gib < tier.release_text_encoders_below_gib:
        # T5-XXL is ~9.5 GB in bf16: keep both text encoders on the CPU and move them in only
        # for an encode (prompt embeddings are cached by the runner).
        for name in ("transformer", "vae"):
            getattr(pipe, name).to(device)
        for name in ("text_encoder", "text_encoder_2"):
            getattr(pipe, name).to("cpu")
        settings["release_text_encoders"] = True
        return f"none (text encoders released between encodes: {total_gib:.0f} GiB card)"
    pipe.to(device)
    return "none"


def component_dtypes(pipe: Any) -> dict[str, list[str]]:
    """The parameter dtypes actually held by each component (fp8 shows up here)."""
    out: dict[str, list[str]] = {}
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            dtypes = {str(p.dtype).removeprefix("torch.") for p in module.parameters()}
            out[name] = sorted(dtypes)
    return out
