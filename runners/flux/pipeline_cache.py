"""Loaded FLUX pipelines, kept per (tier, model folder) so a warm worker loads each only once.

``LoadedPipeline`` is one tier-configured FluxPipeline with what belongs to it (its lock, the
preview matrix, the prompt-embedding cache); ``PipelineCache`` holds them, least recently used
first out. One cache per process: ``PIPELINES``.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.flux.contract import ModelMissing
from runners.flux.tiers import TierSettings

EMBED_CACHE_SIZE = 32


@dataclass
class LoadedPipeline:
    """A loaded, tier-configured FluxPipeline and what belongs to it (one per cache key)."""

    pipe: Any
    tier: TierSettings
    model_dir: Path
    settings: dict[str, Any]
    device: Any  # torch.device the denoising runs on
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # one take at a time
    preview_matrix: Any = None  # fitted lazily, on the first take that wants previews
    embeds: OrderedDict = field(default_factory=OrderedDict)  # prompt-embedding cache
    encode_count: int = 0  # text-encoder runs (the cache avoids them)
    lora_signature: tuple = ()

    def encode(self, texts: list[str], max_sequence_length: int) -> list[tuple[Any, Any]]:
        """(prompt_embeds, pooled) per text; cached, so a repeated prompt skips T5/CLIP."""
        keys = [(text, max_sequence_length, self.lora_signature) for text in texts]
        missing = [k for k in dict.fromkeys(keys) if k not in self.embeds]
        if missing:
            self._encode_missing(missing, max_sequence_length)
        for key in keys:
            self.embeds.move_to_end(key)
        while len(self.embeds) > EMBED_CACHE_SIZE:
            self.embeds.popitem(last=False)
        return [self.embeds[k] for k in keys]

    def _encode_missing(self, missing: list[tuple], max_sequence_length: int) -> None:
        import torch

        release = bool(self.settings.get("release_text_encoders"))
        if release:
            self._text_encoders_to(self.device)
        try:
            for key in missing:
                with torch.no_grad():  # outside the pipeline's own no_grad: no graph kept
                    embeds, pooled, _ = self.pipe.encode_prompt(
                        prompt=key[0], prompt_2=None, device=self.device,
                        max_sequence_length=max_sequence_length,
                    )
                self.embeds[key] = (embeds, pooled)
                self.encode_count += 1
        finally:
            if release:
                self._text_encoders_to("cpu")

    def _text_encoders_to(self, device: Any) -> None:
        import torch

        for name in ("text_encoder", "text_encoder_2"):
            getattr(self.pipe, name).to(device)
        if str(device) == "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def max_pipelines(cuda: bool) -> int:
    raw = os.environ.get("FLUX_MAX_PIPELINES", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return 1 if cuda else 3  # one full-size FLUX fills a GPU; tiny CPU models are cheap


def load(tier: TierSettings, model_dir: Path, workspace: Path | None) -> LoadedPipeline:
    from diffusers import FluxPipeline

    from runners.flux.optimize import torch_dtype

    start = time.perf_counter()
    try:
        pipe = FluxPipeline.from_pretrained(
            str(model_dir), dtype=torch_dtype(tier.compute_dtype), local_files_only=True
        )
    except (OSError, ValueError) as exc:
        raise ModelMissing(f"{tier.variant} at {model_dir} is incomplete or unreadable: {exc}") \
            from exc
    return configure(pipe, tier, model_dir, workspace, start)


def configure(
    pipe: Any, tier: TierSettings, model_dir: Path, workspace: Path | None, start: float
) -> LoadedPipeline:
    """Check the pipeline is the tier's variant and apply the tier's settings to it."""
    from diffusers.utils.torch_utils import get_module_execution_device

    from runners.flux.optimize import apply_tier, pick_device

    has_guidance = bool(pipe.transformer.config.guidance_embeds)
    if has_guidance != tier.guidance_embeds:
        raise ModelMissing(
            f"{model_dir} does not hold {tier.variant}: its transformer has "
            f"guidance_embeds={has_guidance} (FLUX.1-dev has it, FLUX.1-schnell not)"
        )
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.eval()
    settings = apply_tier(pipe, tier, pick_device(), workspace=workspace)
    return LoadedPipeline(
        pipe=pipe,
        tier=tier,
        model_dir=model_dir,
        settings=settings,
        device=get_module_execution_device(pipe.transformer),
        load_seconds=time.perf_counter() - start,
    )


Key = tuple[str, str]  # (quality, model folder)


class PipelineCache:
    """Loaded pipelines by (quality, model folder); one load per key at a time, while other keys
    keep serving. A take keeps its own reference, so evicting never breaks a running take."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Key, LoadedPipeline] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Key, threading.Lock] = {}
        self.loads = 0  # how many times this process really loaded a pipeline from disk

    @staticmethod
    def key(tier: TierSettings, model_dir: Path) -> Key:
        return (tier.quality.value, str(model_dir))

    def peek(self, tier: TierSettings, model_dir: Path) -> LoadedPipeline | None:
        with self._lock:
            return self._entries.get(self.key(tier, model_dir))

    def get(self, tier: TierSettings, model_dir: Path,
            workspace: Path | None) -> tuple[LoadedPipeline, bool]:
        """The cached pipeline, loading it if needed; (entry, loaded_now)."""
        key = self.key(tier, model_dir)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry, False
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry, False
            self._make_room()
            entry = load(tier, model_dir, workspace)
            with self._lock:
                self._entries[key] = entry
                self.loads += 1
            return entry, True

    def _make_room(self) -> None:
        import torch

        evicted = False
        with self._lock:
            while len(self._entries) >= max_pipelines(torch.cuda.is_available()):
                self._entries.popitem(last=False)
                evicted = True
        if evicted:
            free_memory()

    def install(self, entry: LoadedPipeline) -> None:
        """Put an already configured pipeline in (not counted as a load)."""
        with self._lock:
            self._entries[self.key(entry.tier, entry.model_dir)] = entry

    def clear(self) -> None:
        """Drop every pipeline (frees its memory once no take uses it)."""
        with self._lock:
            self._entries.clear()
        free_memory()


PIPELINES = PipelineCache()
