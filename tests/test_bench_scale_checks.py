"""bench/scale.py's own checks, without servers: when a scenario counts as ended, and which end
messages contradict project.json."""

from __future__ import annotations

from typing import Any

from bench.scale import _ended_takes, end_contradictions


def _success(take_id: str) -> dict[str, Any]:
    return {"type": "server:task_success",
            "payload": {"result": {"take_id": take_id, "output_path": "x.png"}}}


def _failed(take_id: str) -> dict[str, Any]:
    return {"type": "server:task_failed", "payload": {"take_id": take_id, "error": "e"}}


def _take(status: str, number: int = 1) -> dict[str, Any]:
    return {"status": status, "number": number, "attempts": 1, "hand_outs": 0, "error": None}


def test_a_take_announced_twice_counts_as_one_ended_take() -> None:
    messages = [_failed("a"), _success("a"), _success("b"), {"type": "server:task_progress"}]
    assert _ended_takes(messages) == {"a", "b"}


def test_end_messages_that_match_project_json_contradict_nothing() -> None:
    outs = [[_success("a"), _failed("b")]] * 3
    takes = {"a": _take("completed"), "b": _take("failed", 2)}
    assert end_contradictions(outs, takes, takes) == []


def test_a_success_sent_before_project_json_records_it_is_caught() -> None:
    outs = [[_success("a")]]
    found = end_contradictions(outs, {"a": _take("generating")}, {"a": _take("completed")})
    assert found == [{"take": 1, "messages": {"success": 1}, "status_when_ended": "generating",
                      "status_later": "completed", "attempts": 1, "hand_outs": 0,
                      "error": None}]


def test_a_take_announced_failed_that_completes_later_is_caught() -> None:
    outs = [[_failed("a")]]
    found = end_contradictions(outs, {"a": _take("failed")}, {"a": _take("completed")})
    assert [f["messages"] for f in found] == [{"failed": 1}]
    assert found[0]["status_later"] == "completed"


def test_a_take_without_any_end_message_is_caught() -> None:
    found = end_contradictions([[]], {"a": _take("queued")}, {"a": _take("completed")})
    assert [f["messages"] for f in found] == [{}]


def test_the_pipeline_counts_its_one_load_and_the_phases_under_its_lock_only() -> None:
    from bench.scale import batch_figures, pipeline_seconds

    # The first take loads; each take's PNG save runs beside the next take's render.
    takes = [{"timings": {"validate": 0.1, "load": 5.0, "encode": 0.2, "denoise": 1.0,
                          "decode": 0.3, "save": 0.4}},
             {"timings": {"validate": 0.1, "load": 0.0, "encode": 0.2, "denoise": 1.0,
                          "decode": 0.3, "save": 0.4}}]
    assert pipeline_seconds(takes) == 5.0 + 2 * (0.2 + 1.0 + 0.3)
    figures = batch_figures(takes, wall=10.0, completed=2)
    assert figures["orchestration_s"] == 10.0 - 8.0
    assert figures["orchestrated_takes_per_s"] == 2 / 2.0
    assert figures["runner_s"] > figures["render_s"]  # every phase, overlaps included
