"""A take's generation parameters: what one render needs, already resolved from the graph.

Parsed once, at the click: `GenerationParams.problems()` holds every rule a render needs beyond
the field types, so a click the runner would refuse is refused before a take is reserved.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from studio.nodes import MAX_PROMPT_CHARS, MAX_SEED, negative_prompt_problem


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
    # Structural only: a take recorded before a rule existed must still load from project.json.
    prompt: str
    negative_prompt: str = ""
    seed: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    loras: list[LoraRef] = []

    def problems(self) -> list[str]:
        """What a render of these parameters would be refused for; empty when it can run."""
        found = []
        if not self.prompt.strip():
            found.append("the prompt is empty: write one, or connect a character or style "
                         "that brings its own words")
        for what, text in (("prompt", self.prompt), ("negative prompt", self.negative_prompt)):
            if len(text) > MAX_PROMPT_CHARS:
                found.append(f"the {what} with its assets' trigger words and style prompts is "
                             f"{len(text)} characters; FLUX takes at most {MAX_PROMPT_CHARS}")
        if not 0 <= self.seed <= MAX_SEED:
            found.append(f"seed {self.seed} is outside 0..{MAX_SEED}")
        negative = negative_prompt_problem(self.negative_prompt, self.cfg_scale)
        if negative:
            found.append(negative)
        return found

    def check(self) -> GenerationParams:
        """These parameters, or ValueError naming every problem."""
        found = self.problems()
        if found:
            raise ValueError("; ".join(found))
        return self
