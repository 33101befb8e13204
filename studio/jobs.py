"""The job a dispatcher hands to a tier task: everything one take needs, already resolved."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from studio.tiers import Quality


class LoraRef(BaseModel):
    """A character's or style's LoRA, as the runner needs it."""

    path: str = Field(description="relative to the workspace root, e.g. Library/LoRAs/alex.safetensors")
    weight: float = 1.0
    trigger_words: list[str] = []
    style_prompt: str = ""
    kind: Literal["character", "style"]


class GenerationParams(BaseModel):
    prompt: str
    negative_prompt: str = ""
    seed: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    loras: list[LoraRef] = []


class TakeJob(BaseModel):
    project_id: str
    node_id: str
    take_id: str
    take_number: int
    output_path: str = Field(description="relative to the project folder; reserved by the dispatcher")
    quality_requested: Quality
    quality_used: Quality
    pipeline_id: str
    params: GenerationParams
