"""The render loop of one take: encode the prompt, denoise with live previews, decode.

Progress bands: loading 2..10, LoRAs 11, encoding 12, denoising 15..90, decode 92, save 96.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from runners.flux.contract import ProgressCallback
from runners.flux.guidance import uses_true_cfg
from runners.flux.output import write_preview
from runners.flux.pipeline_cache import LoadedPipeline
from runners.flux.plan import Plan

DENOISE_START, DENOISE_END = 15, 90


class Progress:
    """Forwards progress, never letting the percent go down."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.percent = 0

    def __call__(self, percent: int, text: str, preview: str | None = None) -> None:
        self.percent = max(self.percent, min(100, max(0, int(percent))))
        if self.callback is not None:
            self.callback(self.percent, text, preview)


def _encode(entry: LoadedPipeline, plan: Plan, progress: Progress,
            timings: dict[str, float]) -> dict[str, Any]:
    """The prompt (and, for true CFG, the negative prompt) as the pipeline's embeds kwargs."""
    text = "Encoding prompt"
    if uses_true_cfg(plan.guidance):
        text += " (negative prompt: true CFG, 2 passes per step, ~2x time)"
    progress(12, text)
    start = time.perf_counter()
    texts = [plan.prompt] + ([plan.negative_prompt] if uses_true_cfg(plan.guidance) else [])
    encoded = entry.encode(texts, plan.tier.max_sequence_length)
    timings["encode"] = time.perf_counter() - start
    kwargs = {"prompt_embeds": encoded[0][0], "pooled_prompt_embeds": encoded[0][1]}
    if len(encoded) > 1:
        kwargs |= {"negative_prompt_embeds": encoded[1][0],
                   "negative_pooled_prompt_embeds": encoded[1][1]}
    return kwargs


def _start_latents(entry: LoadedPipeline, plan: Plan, dtype: Any) -> tuple[Any, Any]:
    """The starting noise, drawn exactly as the pipeline would (a CPU generator, so the same seed
    gives the same image on any device): the first preview needs it. (latents, generator)"""
    import torch

    pipe = entry.pipe
    generator = torch.Generator("cpu").manual_seed(plan.seed)
    channels = pipe.transformer.config.in_channels // 4
    latents, _ = pipe.prepare_latents(
        1, channels, plan.height, plan.width, dtype, entry.device, generator
    )
    return latents, generator


def _preview_renderer(entry: LoadedPipeline, plan: Plan, latents: Any,
                      timings: dict[str, float]) -> Any:
    if not plan.preview_every:
        return None
    from runners.flux.preview import PreviewRenderer, fit_latent_to_rgb

    if entry.preview_matrix is None:  # once per loaded pipeline
        start = time.perf_counter()
        entry.preview_matrix = fit_latent_to_rgb(entry.pipe)
        timings["preview_fit"] = time.perf_counter() - start
    renderer = PreviewRenderer(entry.pipe, entry.preview_matrix, plan.width, plan.height)
    renderer.start(latents)
    return renderer


class _StepCallback:
    """``callback_on_step_end``: progress after each step, a preview every few steps."""

    def __init__(self, plan: Plan, progress: Progress, renderer: Any) -> None:
        self.plan, self.progress, self.renderer = plan, progress, renderer
        self.last_preview: Path | None = None

    def __call__(self, _pipe: Any, index: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        plan, done = self.plan, index + 1
        percent = DENOISE_START + (DENOISE_END - DENOISE_START) * done // plan.steps
        preview = None
        if self.renderer is not None:
            x0 = self.renderer.step(index, kwargs["latents"])
            if done % plan.preview_every == 0 and plan.preview_path is not None:
                write_preview(plan.preview_path, self.renderer.image(x0))
                preview = str(plan.preview_path)
                self.last_preview = plan.preview_path
        self.progress(percent, f"Denoising step {done}/{plan.steps}", preview)
        return kwargs


def _decode(entry: LoadedPipeline, plan: Plan, packed: Any) -> Any:
    import torch
    from diffusers.utils.torch_utils import get_module_execution_device

    pipe = entry.pipe
    with torch.no_grad():
        lat = pipe._unpack_latents(packed, plan.height, plan.width, pipe.vae_scale_factor)
        lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        lat = lat.to(device=get_module_execution_device(pipe.vae), dtype=pipe.vae.dtype)
        decoded = pipe.vae.decode(lat, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")[0]


def render(entry: LoadedPipeline, plan: Plan, progress: Progress,
           timings: dict[str, float]) -> tuple[Any, Path | None]:
    """The take's image (PIL) and the last preview written, if any."""
    embeds = _encode(entry, plan, progress, timings)
    latents, generator = _start_latents(entry, plan, embeds["prompt_embeds"].dtype)
    on_step = _StepCallback(plan, progress, _preview_renderer(entry, plan, latents, timings))
    progress(DENOISE_START, f"Denoising step 0/{plan.steps}")
    start = time.perf_counter()
    packed = entry.pipe(
        **embeds,
        **plan.guidance,
        height=plan.height,
        width=plan.width,
        num_inference_steps=plan.steps,
        latents=latents,
        generator=generator,
        output_type="latent",
        max_sequence_length=plan.tier.max_sequence_length,
        callback_on_step_end=on_step,
    ).images
    timings["denoise"] = time.perf_counter() - start
    progress(92, "Decoding image")
    start = time.perf_counter()
    image = _decode(entry, plan, packed)
    timings["decode"] = time.perf_counter() - start
    return image, on_step.last_preview
