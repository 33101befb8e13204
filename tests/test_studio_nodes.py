"""Node types: the registry, Text-to-Image's sockets and parameters, and their JSON Schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from studio.nodes import (
    ASPECT_PRESETS,
    MAX_PIXELS,
    NODE_TYPES,
    NodeType,
    SocketSpec,
    StringParams,
    TextToImageParams,
    node_type,
    node_types_schema,
)
from studio.sockets import SocketType


def test_the_registry_holds_the_generation_primitive_and_asset_types() -> None:
    assert {name: cls.category for name, cls in NODE_TYPES.items()} == {
        "text_to_image": "generation",
        "string": "primitive",
        "integer": "primitive",
        "float": "primitive",
        "boolean": "primitive",
        "character": "asset",
        "style": "asset",
    }


@pytest.fixture
def unregister() -> Iterator[None]:
    yield
    NODE_TYPES.pop("test_upper", None)


def test_a_new_node_type_is_one_class(unregister: None) -> None:
    class Upper(NodeType):
        name = "test_upper"
        title = "Upper"
        category = "text"
        inputs = (SocketSpec(name="text", type=SocketType.String),)
        outputs = (SocketSpec(name="value", type=SocketType.String),)
        params_model = StringParams

    assert node_type("test_upper") is Upper
    assert node_types_schema()["test_upper"]["inputs"][0]["type"] == "String"


def test_an_unknown_node_type_is_named_with_the_known_ones() -> None:
    with pytest.raises(LookupError, match="unknown node type 'upscale'; known: boolean, "):
        node_type("upscale")


def test_text_to_image_has_the_spec_sockets() -> None:
    described = node_types_schema()["text_to_image"]

    assert described["title"] == "Text-to-Image"
    assert [(s["name"], s["type"], s["optional"]) for s in described["inputs"]] == [
        ("prompt", "String", False),
        ("negative_prompt", "String", False),
        ("style", "AssetReference", True),
        ("character", "AssetReference", True),
    ]
    assert [(s["name"], s["type"]) for s in described["outputs"]] == [("image", "Image")]
    assert described["on_node"] == ["prompt"]


def test_primitives_and_assets_have_one_typed_output() -> None:
    schema = node_types_schema()

    assert {n: [(s["name"], s["type"]) for s in schema[n]["outputs"]] for n in schema} == {
        "text_to_image": [("image", "Image")],
        "string": [("value", "String")],
        "integer": [("value", "Integer")],
        "float": [("value", "Float")],
        "boolean": [("value", "Boolean")],
        "character": [("asset", "AssetReference")],
        "style": [("asset", "AssetReference")],
    }


def _bounds(prop: dict) -> dict:
    """Bounds of a property, looking inside `anyOf` for nullable ones."""
    for option in [prop, *prop.get("anyOf", [])]:
        found = {k: option[k] for k in ("minimum", "maximum", "multipleOf") if k in option}
        if found:
            return found
    return {}


def test_the_json_schema_of_text_to_image_carries_every_parameter_with_its_bounds() -> None:
    props = node_types_schema()["text_to_image"]["params"]["properties"]

    assert set(props) == set(TextToImageParams.model_fields)
    assert _bounds(props["seed"]) == {"minimum": 0, "maximum": 2**32 - 1}
    assert _bounds(props["steps"]) == {"minimum": 1, "maximum": 100}
    assert _bounds(props["cfg_scale"]) == {"minimum": 0, "maximum": 20}
    for side in ("width", "height"):
        assert _bounds(props[side]) == {"minimum": 256, "maximum": 2048, "multipleOf": 16}
    assert props["preset"]["enum"] == [*ASPECT_PRESETS, "custom"]
    assert (props["steps"]["default"], props["cfg_scale"]["default"]) == (28, 3.5)


def test_the_defaults_render_1024_square_with_a_random_seed() -> None:
    params = TextToImageParams()

    assert params.size() == (1024, 1024)
    assert params.fixed_seed() is None


@pytest.mark.parametrize("preset", list(ASPECT_PRESETS))
def test_every_preset_size_is_a_multiple_of_16_within_flux_limits(preset: str) -> None:
    width, height = TextToImageParams(preset=preset).size()
    w, h = map(int, preset.split(":"))

    assert width % 16 == 0 and height % 16 == 0
    assert 256 <= width <= 2048 and 256 <= height <= 2048
    assert 0.9e6 <= width * height <= 1.1e6
    assert abs(width / height - w / h) < 0.05 * (w / h)


def test_the_smallest_custom_size_is_256_square() -> None:
    assert TextToImageParams(preset="custom", width=256, height=256).size() == (256, 256)


sides = st.integers(min_value=0, max_value=4096)


@given(sides, sides)
def test_a_custom_size_is_accepted_exactly_when_within_flux_limits(width: int, height: int) -> None:
    def side_ok(side: int) -> bool:
        return 256 <= side <= 2048 and side % 16 == 0

    allowed = side_ok(width) and side_ok(height) and width * height <= MAX_PIXELS
    try:
        params = TextToImageParams(preset="custom", width=width, height=height)
    except ValidationError:
        assert not allowed
    else:
        assert allowed and params.size() == (width, height)


def test_a_size_over_the_pixel_limit_says_so() -> None:
    with pytest.raises(ValidationError, match="2048x2048 is 4194304 pixels; FLUX allows at most"):
        TextToImageParams(preset="custom", width=2048, height=2048)


def test_width_and_height_belong_to_the_custom_preset_only() -> None:
    with pytest.raises(ValidationError, match="width/height are set only with preset 'custom'"):
        TextToImageParams(preset="16:9", width=512, height=512)
    with pytest.raises(ValidationError, match="preset 'custom' needs both width and height"):
        TextToImageParams(preset="custom", width=512)


@pytest.mark.parametrize(
    "bad",
    [{"steps": "28"}, {"steps": 0}, {"cfg_scale": float("inf")}, {"seed": -1}, {"seed": 2**32}],
)
def test_out_of_range_or_mistyped_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        TextToImageParams(**bad)


def test_randomize_seed_keeps_the_seed_but_draws_a_new_one_per_take() -> None:
    assert TextToImageParams(seed=42).fixed_seed() == 42
    assert TextToImageParams(seed=42, randomize_seed=True).fixed_seed() is None
