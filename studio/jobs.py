"""The job a dispatcher hands to a tier task: everything one take needs, already resolved."""

from __future__ import annotations

from pydantic import BaseModel, Field

from studio.manifest import Shot
from studio.params import GenerationParams, LoraRef
from studio.tiers import Quality

__all__ = ["GenerationParams", "LoraRef", "TakeJob"]


class TakeJob(BaseModel):
    project_id: str
    node_id: str
    take_id: str
    shot: Shot = Field(description="the node's shot version: names and tags the take's run")
    take_number: int
    output_path: str = Field(
        description="relative to the project folder; reserved by the dispatcher"
    )
    quality_requested: Quality
    quality_used: Quality
    pipeline_id: str
    params: GenerationParams

    def label(self) -> str:
        """`Project_Odyssey · SHOT-015 · v01 · take04`: a readable name for the take's run."""
        shot = self.shot.shot.replace("SHOT_", "SHOT-")
        return " · ".join([self.project_id, shot, self.shot.version,
                           f"take{self.take_number:02d}"])
