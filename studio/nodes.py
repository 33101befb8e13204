"""Node anatomy (spec 1.1): node states, typed sockets, parameter models and the node-type registry.

A new node type is one subclass of `NodeType` that sets `name`: defining it registers it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runners.flux.contract import MAX_PROMPT_CHARS, MAX_SEED  # the runner contract's: one value
from studio.sockets import SocketType


class NodeState(StrEnum):
    idle = "idle"
    queued = "queued"
    generating = "generating"
    completed = "completed"
    error = "error"
    out_of_sync = "out_of_sync"


AssetKind = Literal["character", "style"]


class SocketSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    type: SocketType
    optional: bool = False
    param: str | None = Field(
        None, description="the parameter this input overrides when an edge is connected to it"
    )
    asset_kind: AssetKind | None = Field(
        None, description="AssetReference sockets: the kind of asset carried (or accepted)"
    )


# --- FLUX limits (diffusers only warns and rounds down bad sizes, so we refuse them) ---
SIDE_MIN = 256
SIDE_MAX = 2048
SIDE_MULTIPLE = 16
MAX_PIXELS = 4_000_000


def negative_prompt_problem(negative_prompt: str, cfg_scale: float) -> str | None:
    """A negative prompt acts only through true CFG (scale > 1): below that it would be
    silently ignored, so it is refused (the runner's own guidance rule, runners/flux/tiers.py)."""
    if negative_prompt.strip() and not cfg_scale > 1.0:
        return (f"a negative prompt needs CFG scale > 1 (true CFG); it is {cfg_scale:g}: "
                "raise CFG scale or clear the negative prompt")
    return None

# Multiples of 16 near 1 MP, the size FLUX is trained around.
ASPECT_PRESETS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 864),
    "3:4": (864, 1152),
    "3:2": (1248, 832),
    "2:3": (832, 1248),
    "21:9": (1568, 672),
}
CUSTOM = "custom"
AspectPreset = Literal[(*ASPECT_PRESETS, CUSTOM)]  # type: ignore[valid-type]

Side = Annotated[int, Field(ge=SIDE_MIN, le=SIDE_MAX, multiple_of=SIDE_MULTIPLE)]
AssetId = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        json_schema_extra={"format": "uuid"},
    ),
]


class ParamsBase(BaseModel):
    # Strict: a manifest saying steps "28" or cfg_scale true is wrong, not something to coerce.
    model_config = ConfigDict(extra="forbid", strict=True)


class TextToImageParams(ParamsBase):
    # The canvas reads the presets' pixel sizes here (its Dimensions dropdown, a custom size
    # starting from the chosen preset's) instead of keeping its own copy of ASPECT_PRESETS.
    model_config = ConfigDict(
        json_schema_extra={
            "x-max-pixels": MAX_PIXELS,
            "x-aspect-presets": {name: list(size) for name, size in ASPECT_PRESETS.items()},
        }
    )

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS,
                        description="positive prompt (on the node and in the inspector)")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="null: a random seed per take")
    randomize_seed: bool = Field(False, description="a new seed per take, `seed` kept for later")
    steps: int = Field(28, ge=1, le=100)
    cfg_scale: float = Field(3.5, ge=0, le=20, allow_inf_nan=False)
    preset: AspectPreset = Field("1:1", description="aspect preset, or 'custom' for width/height")
    width: Side | None = Field(None, description="only with preset 'custom'")
    height: Side | None = Field(None, description="only with preset 'custom'")

    @model_validator(mode="after")
    def _size_matches_preset(self) -> TextToImageParams:
        if self.preset == CUSTOM:
            if self.width is None or self.height is None:
                raise ValueError("preset 'custom' needs both width and height")
            if self.width * self.height > MAX_PIXELS:
                raise ValueError(
                    f"{self.width}x{self.height} is {self.width * self.height} pixels; "
                    f"FLUX allows at most {MAX_PIXELS}"
                )
        elif self.width is not None or self.height is not None:
            raise ValueError(
                f"width/height are set only with preset 'custom' (preset is {self.preset!r})"
            )
        return self

    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        if self.preset == CUSTOM:
            assert self.width is not None and self.height is not None  # checked on validation
            return self.width, self.height
        return ASPECT_PRESETS[self.preset]

    def fixed_seed(self) -> int | None:
        """The seed every take uses, or None when each take draws its own."""
        return None if self.randomize_seed else self.seed


class StringParams(ParamsBase):
    # A String node feeds prompts: bounded like them.
    value: str = Field("", max_length=MAX_PROMPT_CHARS)


class IntegerParams(ParamsBase):
    value: int = 0


class FloatParams(ParamsBase):
    value: float = Field(0.0, allow_inf_nan=False)


class BooleanParams(ParamsBase):
    value: bool = False


class CharacterParams(ParamsBase):
    asset_id: AssetId = Field(description="a character in the project's assets")


class StyleParams(ParamsBase):
    asset_id: AssetId = Field(description="a style in the project's assets")


class UnknownNodeType(LookupError):
    pass


NODE_TYPES: dict[str, type[NodeType]] = {}


class NodeType:
    """One kind of node: its header, sockets and parameters. Never instantiated."""

    name: ClassVar[str]
    title: ClassVar[str]
    category: ClassVar[str]
    inputs: ClassVar[tuple[SocketSpec, ...]] = ()
    outputs: ClassVar[tuple[SocketSpec, ...]] = ()
    params_model: ClassVar[type[ParamsBase]]
    on_node: ClassVar[tuple[str, ...]] = ()  # on-canvas controls; every param is in the inspector
    has_takes: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # an intermediate base, not a node type
            return
        if cls.name in NODE_TYPES:
            raise TypeError(f"node type {cls.name!r} is already registered")
        NODE_TYPES[cls.name] = cls

    @classmethod
    def input(cls, name: str) -> SocketSpec | None:
        return next((s for s in cls.inputs if s.name == name), None)

    @classmethod
    def output(cls, name: str) -> SocketSpec | None:
        return next((s for s in cls.outputs if s.name == name), None)

    @classmethod
    def output_value(cls, params: Any, socket: str) -> Any:
        """The value an output carries, when the node's parameters alone determine it."""
        raise NotImplementedError(f"{cls.name}.{socket} has no value before it is generated")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What the canvas needs to draw this node type and its inspector."""
        return {
            "name": cls.name,
            "title": cls.title,
            "category": cls.category,
            "inputs": [s.model_dump(mode="json") for s in cls.inputs],
            "outputs": [
                s.model_dump(mode="json", exclude={"optional", "param"}) for s in cls.outputs
            ],
            "params": cls.params_model.model_json_schema(),
            "on_node": list(cls.on_node),
            "has_takes": cls.has_takes,
        }


def node_type(name: str) -> type[NodeType]:
    try:
        return NODE_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(NODE_TYPES))
        raise UnknownNodeType(f"unknown node type {name!r}; known: {known}") from None


def node_types_schema() -> dict[str, Any]:
    """Every registered node type, keyed by name (served at GET /api/node-types)."""
    return {name: cls.describe() for name, cls in NODE_TYPES.items()}


class TextToImage(NodeType):
    name = "text_to_image"
    title = "Text-to-Image"
    category = "generation"
    inputs = (
        SocketSpec(name="prompt", type=SocketType.String, param="prompt"),
        SocketSpec(name="negative_prompt", type=SocketType.String, param="negative_prompt"),
        SocketSpec(name="style", type=SocketType.AssetReference, optional=True, asset_kind="style"),
        SocketSpec(
            name="character", type=SocketType.AssetReference, optional=True, asset_kind="character"
        ),
    )
    outputs = (SocketSpec(name="image", type=SocketType.Image),)
    params_model = TextToImageParams
    on_node = ("prompt",)
    has_takes = True


class _Primitive(NodeType):
    category = "primitive"
    on_node = ("value",)

    @classmethod
    def output_value(cls, params: Any, socket: str) -> Any:
        return params.value


class StringNode(_Primitive):
    name = "string"
    title = "String"
    outputs = (SocketSpec(name="value", type=SocketType.String),)
    params_model = StringParams


class IntegerNode(_Primitive):
    name = "integer"
    title = "Integer"
    outputs = (SocketSpec(name="value", type=SocketType.Integer),)
    params_model = IntegerParams


class FloatNode(_Primitive):
    name = "float"
    title = "Float"
    outputs = (SocketSpec(name="value", type=SocketType.Float),)
    params_model = FloatParams


class BooleanNode(_Primitive):
    name = "boolean"
    title = "Boolean"
    outputs = (SocketSpec(name="value", type=SocketType.Boolean),)
    params_model = BooleanParams


class _AssetNode(NodeType):
    """Puts one of the project's assets on the canvas."""

    category = "asset"
    on_node = ("asset_id",)

    @classmethod
    def output_value(cls, params: Any, socket: str) -> Any:
        return params.asset_id


class CharacterNode(_AssetNode):
    name = "character"
    title = "Character"
    outputs = (SocketSpec(name="asset", type=SocketType.AssetReference, asset_kind="character"),)
    params_model = CharacterParams


class StyleNode(_AssetNode):
    name = "style"
    title = "Style"
    outputs = (SocketSpec(name="asset", type=SocketType.AssetReference, asset_kind="style"),)
    params_model = StyleParams
