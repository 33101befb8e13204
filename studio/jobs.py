"""The job a dispatcher hands to a tier task: everything one take needs, already resolved."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from studio.nodes import MAX_PROMPT_CHARS
from studio.tiers import TIERS, Quality

if TYPE_CHECKING:
    from studio.store import ProjectStore


class LoraRef(BaseModel):
    """A character's or style's LoRA, as the runner needs it."""

    path: str = Field(
        description="relative to the workspace root, e.g. Library/LoRAs/alex.safetensors"
    )
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
    output_path: str = Field(
        description="relative to the project folder; reserved by the dispatcher"
    )
    quality_requested: Quality
    quality_used: Quality
    pipeline_id: str
    params: GenerationParams


def check_prompt_length(params: GenerationParams) -> None:
    """The prompt as composed (trigger words, prompt, style prompts) must fit the runner."""
    for what, text in (("prompt", params.prompt), ("negative prompt", params.negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"the {what} with its assets' trigger words and style prompts is {len(text)} "
                f"characters; FLUX takes at most {MAX_PROMPT_CHARS}")


def prepare_take(
    store: ProjectStore,
    project_id: str,
    node_id: str,
    *,
    quality_requested: Quality,
    quality_used: Quality,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> TakeJob:
    """Resolves a Text-to-Image node and reserves its next take: the job a tier task runs.

    The output path comes from the take allocation, never from a client. `overrides` (a sweep's
    cell: prompt, steps, cfg_scale) replace the node's values for this take only.
    """
    # Imported here: graph and takes build on the models above.
    from studio.graph import fingerprint, resolve_inputs, to_generation_params
    from studio.takes import reserve_take

    project = store.load(project_id)
    resolved = resolve_inputs(project, node_id)
    params = to_generation_params(resolved, seed)
    node_fingerprint = fingerprint(project, node_id)
    if overrides:
        params = GenerationParams.model_validate({**params.model_dump(), **overrides})
        # Not the node's own settings: the take must not read as in sync with the node.
        extra = json.dumps(overrides, sort_keys=True)
        node_fingerprint = hashlib.sha256(f"{node_fingerprint}:{extra}".encode()).hexdigest()
    check_prompt_length(params)  # before a take is reserved for a render that would fail
    tier = TIERS[Quality(quality_used)]
    take = reserve_take(
        store,
        project_id,
        node_id,
        quality_requested=Quality(quality_requested),
        quality_used=Quality(quality_used),
        pipeline_id=tier.pipeline_id,
        params=params.model_dump(),
        fingerprint=node_fingerprint,
    )
    return TakeJob(
        project_id=project_id,
        node_id=node_id,
        take_id=take.id,
        take_number=take.number,
        output_path=take.path,
        quality_requested=Quality(quality_requested),
        quality_used=Quality(quality_used),
        pipeline_id=tier.pipeline_id,
        params=params,
    )
