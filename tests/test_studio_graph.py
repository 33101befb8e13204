"""The graph: edges refused with actionable messages, input resolution, plans, staleness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studio.graph import (
    GraphError,
    execution_plan,
    fingerprint,
    node_state,
    resolve_inputs,
    to_generation_params,
    validate_edge,
    validate_project,
)
from studio.jobs import LoraRef
from studio.manifest import Edge, Project, Shot, TakeStatus, new_node
from studio.nodes import NODE_TYPES, NodeState, NodeType, SocketSpec, StringParams
from studio.sockets import SocketType
from tests.factories import STYLE_ID, add_take, odyssey


def messages(project: Project) -> list[str]:
    return [str(p) for p in validate_project(project)]


def refusal(project: Project, edge: Edge) -> str:
    with pytest.raises(GraphError) as info:
        validate_edge(project, edge)
    return str(info.value)


@pytest.fixture
def joiner() -> Iterator[type[NodeType]]:
    """A String -> String node type, registered for one test: the only way to wire a cycle."""

    class Join(NodeType):
        name = "test_join"
        title = "Join"
        category = "test"
        inputs = (SocketSpec(name="text", type=SocketType.String),)
        outputs = (SocketSpec(name="value", type=SocketType.String),)
        params_model = StringParams

    yield Join
    del NODE_TYPES["test_join"]


def test_the_sample_project_is_valid() -> None:
    assert messages(odyssey()) == []


def test_an_image_to_string_edge_is_refused_naming_both_types() -> None:
    project = odyssey()
    project.nodes.append(
        new_node(
            "text_to_image",
            node_id="shot16",
            shot=Shot(scene="SCENE_02", shot="SHOT_016", version="v01"),
        )
    )
    project.edges.remove(project.edges[0])  # free shot15.prompt

    message = refusal(
        project,
        Edge(
            id="e9", source="shot16", source_socket="image", target="shot15", target_socket="prompt"
        ),
    )

    assert message == "edge e9: cannot connect shot16.image (Image) to shot15.prompt (String)"


def test_a_character_on_the_style_input_is_refused() -> None:
    project = odyssey()
    project.edges = [e for e in project.edges if e.target_socket != "style"]

    message = refusal(
        project,
        Edge(id="e9", source="alex", source_socket="asset", target="shot15", target_socket="style"),
    )

    assert message == (
        "edge e9: cannot connect alex.asset (a character asset) to shot15.style (takes a style)"
    )


def test_an_input_taking_a_second_edge_is_refused() -> None:
    project = odyssey()
    project.nodes.append(new_node("string", node_id="other"))

    message = refusal(
        project,
        Edge(
            id="e9", source="other", source_socket="value", target="shot15", target_socket="prompt"
        ),
    )

    assert message == "edge e9: input shot15.prompt already has edge e1; an input takes one edge"


def test_an_edge_from_an_unknown_node_is_refused() -> None:
    message = refusal(
        odyssey(),
        Edge(
            id="e9", source="ghost", source_socket="value", target="shot15", target_socket="prompt"
        ),
    )

    assert message == "edge e9: unknown source node 'ghost'"


def test_an_edge_to_an_unknown_socket_is_refused_listing_the_real_ones() -> None:
    message = refusal(
        odyssey(),
        Edge(
            id="e9", source="prompt", source_socket="value", target="shot15", target_socket="seed"
        ),
    )

    assert message == (
        "edge e9: node shot15 (text_to_image) has no input socket 'seed' "
        "(inputs: prompt, negative_prompt, style, character)"
    )


def test_an_edge_from_an_unknown_output_socket_is_refused() -> None:
    message = refusal(
        odyssey(),
        Edge(id="e9", source="alex", source_socket="lora", target="shot15", target_socket="prompt"),
    )

    assert message.startswith("edge e9: node alex (character) has no output socket 'lora'")


def test_an_edge_closing_a_cycle_is_refused_naming_its_nodes(joiner: type[NodeType]) -> None:
    project = Project(
        id="Loop",
        name="Loop",
        nodes=[new_node("test_join", node_id=n) for n in ("a", "b", "c")],
        edges=[
            Edge(id="ab", source="a", source_socket="value", target="b", target_socket="text"),
            Edge(id="bc", source="b", source_socket="value", target="c", target_socket="text"),
        ],
    )

    message = refusal(
        project, Edge(id="ca", source="c", source_socket="value", target="a", target_socket="text")
    )

    assert message == "edge ca: closes a cycle c -> a -> b -> c"


def test_a_project_with_a_cycle_reports_it_once(joiner: type[NodeType]) -> None:
    project = Project(
        id="Loop",
        name="Loop",
        nodes=[new_node("test_join", node_id=n) for n in ("a", "b")],
        edges=[
            Edge(id="ab", source="a", source_socket="value", target="b", target_socket="text"),
            Edge(id="ba", source="b", source_socket="value", target="a", target_socket="text"),
        ],
    )

    assert messages(project) == ["edge ba: closes a cycle b -> a -> b"]
    with pytest.raises(GraphError, match="a cycle upstream of a among a, b"):
        execution_plan(project, "a")


def test_two_nodes_rendering_one_shot_are_refused() -> None:
    project = odyssey()
    project.nodes.append(
        new_node("text_to_image", node_id="copy", shot=project.nodes[4].shot.model_copy())
    )

    assert messages(project) == [
        "nodes shot15 and copy both render shot SCENE_02/SHOT_015/v01; "
        "a shot version belongs to one node"
    ]


def test_an_asset_node_pointing_at_a_missing_asset_is_reported() -> None:
    project = odyssey()
    project.assets = [a for a in project.assets if a.kind != "style"]

    assert messages(project) == [
        f"node noir (style): asset {STYLE_ID} is not in the project's assets"
    ]
    with pytest.raises(GraphError, match="is not in the project's assets"):
        resolve_inputs(project, "shot15")


def test_a_connected_input_overrides_the_on_node_value() -> None:
    resolved = resolve_inputs(odyssey(), "shot15")

    assert "a lone astronaut, red desert" in resolved.prompt
    assert "typed on the node" not in resolved.prompt
    assert resolved.negative_prompt == "cartoon"


def test_an_unconnected_input_uses_the_on_node_value() -> None:
    project = odyssey()
    project.edges = [e for e in project.edges if e.target_socket != "prompt"]

    assert "typed on the node" in resolve_inputs(project, "shot15").prompt


def test_assets_resolve_to_loras_and_into_the_final_prompt() -> None:
    resolved = resolve_inputs(odyssey(), "shot15")

    assert resolved.prompt == "alexchar, a lone astronaut, red desert, film noir, high contrast"
    assert resolved.loras == [
        LoraRef(
            kind="character",
            path="Library/LoRAs/alex.safetensors",
            weight=0.8,
            trigger_words=["alexchar"],
        )
    ]


def test_a_style_with_a_lora_loads_it_after_the_character() -> None:
    project = odyssey()
    project.assets[1].lora_path = "Library/LoRAs/noir.safetensors"

    loras = resolve_inputs(project, "shot15").loras

    assert [(lora.kind, lora.path, lora.style_prompt) for lora in loras] == [
        ("character", "Library/LoRAs/alex.safetensors", ""),
        ("style", "Library/LoRAs/noir.safetensors", "film noir, high contrast"),
    ]


def test_parameters_resolve_with_the_preset_size_and_fixed_seed() -> None:
    resolved = resolve_inputs(odyssey(), "shot15")

    assert (resolved.seed, resolved.steps, resolved.cfg_scale) == (42, 28, 3.5)
    assert (resolved.width, resolved.height) == (1024, 1024)


def test_generation_params_take_the_seed_given_else_the_nodes_else_a_random_one() -> None:
    resolved = resolve_inputs(odyssey(), "shot15")

    assert to_generation_params(resolved, 7).seed == 7
    assert to_generation_params(resolved).seed == 42
    random_seeds = {
        to_generation_params(resolved.model_copy(update={"seed": None})).seed for _ in range(5)
    }
    assert len(random_seeds) > 1


def test_the_execution_plan_is_the_upstream_subgraph_in_order() -> None:
    project = odyssey()
    project.nodes.append(new_node("string", node_id="unrelated"))

    assert execution_plan(project, "shot15") == ["prompt", "negative", "alex", "noir", "shot15"]
    assert execution_plan(project, "prompt") == ["prompt"]


def test_changing_an_upstream_primitive_changes_the_fingerprint() -> None:
    project = odyssey()
    before = fingerprint(project, "shot15")

    project.nodes[0].params["value"] = "a lone astronaut, blue desert"

    assert fingerprint(project, "shot15") != before


def test_a_value_node_has_a_fingerprint_that_follows_its_value() -> None:
    project = odyssey()
    before = fingerprint(project, "prompt")

    project.nodes[0].params["value"] = "a lone astronaut, blue desert"

    assert fingerprint(project, "prompt") != before
    assert fingerprint(project, "negative") == fingerprint(odyssey(), "negative")


def test_a_node_whose_upstream_changed_is_out_of_sync() -> None:
    project = odyssey()
    add_take(project, "shot15", fingerprint=fingerprint(project, "shot15"))
    assert node_state(project, "shot15") == NodeState.completed

    project.nodes[0].params["value"] = "a lone astronaut, blue desert"

    assert node_state(project, "shot15") == NodeState.out_of_sync


def test_a_random_seed_does_not_make_a_node_out_of_sync() -> None:
    project = odyssey()
    project.nodes[4].params["seed"] = None
    before = fingerprint(project, "shot15")
    project.nodes[4].params["randomize_seed"] = True

    assert fingerprint(project, "shot15") == before
    project.nodes[4].params.update(seed=1, randomize_seed=False)
    assert fingerprint(project, "shot15") != before


@pytest.mark.parametrize(
    ("statuses", "state"),
    [
        ([], NodeState.idle),
        ([TakeStatus.completed, TakeStatus.queued], NodeState.queued),
        ([TakeStatus.queued, TakeStatus.generating], NodeState.generating),
        ([TakeStatus.completed, TakeStatus.failed], NodeState.error),
        ([TakeStatus.failed, TakeStatus.completed], NodeState.completed),
    ],
)
def test_the_node_state_follows_its_takes(statuses: list[TakeStatus], state: NodeState) -> None:
    project = odyssey()
    for status in statuses:
        add_take(project, "shot15", status, fingerprint=fingerprint(project, "shot15"))

    assert node_state(project, "shot15") == state


def test_only_text_to_image_nodes_resolve() -> None:
    with pytest.raises(GraphError, match="node prompt is a string node, not text_to_image"):
        resolve_inputs(odyssey(), "prompt")


def test_an_unknown_node_is_named() -> None:
    with pytest.raises(GraphError, match="project Project_Odyssey has no node 'ghost'"):
        execution_plan(odyssey(), "ghost")
