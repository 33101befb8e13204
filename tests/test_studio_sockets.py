"""Socket types (spec 1.2) and the one connection rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from studio.sockets import REPRESENTATION, SocketType, can_connect

SPEC_TYPES = [
    "String",
    "Integer",
    "Float",
    "Boolean",
    "Image",
    "Video",
    "Audio",
    "AssetReference",
    "ControlMap",
    "Mask",
    "PipelineReference",
]


def test_the_socket_types_are_the_eleven_of_the_spec() -> None:
    assert [t.value for t in SocketType] == SPEC_TYPES


def test_file_types_travel_as_relative_paths_and_assets_as_uuids() -> None:
    paths = {t for t, rep in REPRESENTATION.items() if rep.get("format") == "relative-path"}

    assert paths == {"Image", "Video", "Audio", "ControlMap", "Mask"}
    assert REPRESENTATION[SocketType.AssetReference] == {"type": "string", "format": "uuid"}
    assert REPRESENTATION[SocketType.Float] == {"type": "number"}
    assert set(REPRESENTATION) == set(SocketType)


@given(st.sampled_from(SocketType), st.sampled_from(SocketType))
def test_an_output_connects_only_to_an_input_of_the_same_type(
    output: SocketType, input: SocketType
) -> None:
    assert can_connect(output, input) == (output == input)


def test_an_integer_does_not_feed_a_float() -> None:
    assert not can_connect(SocketType.Integer, SocketType.Float)
