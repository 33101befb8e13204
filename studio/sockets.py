"""Socket data types (spec 1.2): the language of data flow between nodes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class SocketType(StrEnum):
    String = "String"
    Integer = "Integer"
    Float = "Float"
    Boolean = "Boolean"
    Image = "Image"
    Video = "Video"
    Audio = "Audio"
    AssetReference = "AssetReference"
    ControlMap = "ControlMap"
    Mask = "Mask"
    PipelineReference = "PipelineReference"


# The value that travels along an edge of each type, as a JSON Schema fragment. File types carry a
# path relative to the project folder; references carry an identifier, never the thing itself.
REPRESENTATION: dict[SocketType, dict[str, Any]] = {
    SocketType.String: {"type": "string"},
    SocketType.Integer: {"type": "integer"},
    SocketType.Float: {"type": "number"},
    SocketType.Boolean: {"type": "boolean"},
    SocketType.Image: {"type": "string", "format": "relative-path"},
    SocketType.Video: {"type": "string", "format": "relative-path"},
    SocketType.Audio: {"type": "string", "format": "relative-path"},
    SocketType.AssetReference: {"type": "string", "format": "uuid"},
    SocketType.ControlMap: {"type": "string", "format": "relative-path"},
    SocketType.Mask: {"type": "string", "format": "relative-path"},
    SocketType.PipelineReference: {"type": "string", "description": "UUID or unique name"},
}


def can_connect(output: SocketType, input: SocketType) -> bool:
    """The one connection rule: an output feeds an input of exactly the same type.

    No implicit conversions (an Integer does not feed a Float): the runner gets what it expects.
    """
    return SocketType(output) == SocketType(input)
