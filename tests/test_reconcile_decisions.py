"""The reconciler's decision for one take (api.reconcile_rules.decide), case by case: a take is
handed out again only when Prefect's state says the run was lost, a dead worker's take is
retried once, and nothing fails for want of a worker."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prefect.client.schemas.objects import StateType

from api.reconcile_rules import (
    LOST_AFTER_SECONDS,
    MAX_ATTEMPTS,
    STALLED_AFTER_SECONDS,
    Action,
    Facts,
    Unknown,
    decide,
)
from api.settings import Settings
from studio.manifest import TakeStatus

# A queued take handed to Prefect a while ago, its tier's worker online and idle for long.
LOST = Facts(status=TakeStatus.queued, has_run=True, run_state=StateType.SCHEDULED,
             waited=60, tier_online_for=60, tier_idle_for=60)


def test_a_scheduled_run_with_an_idle_worker_online_is_lost_and_requeued() -> None:
    assert decide(LOST).action == Action.requeue


def test_a_scheduled_run_with_no_worker_online_waits_however_long() -> None:
    assert decide(replace(LOST, tier_online_for=0, waited=86_400)).action == Action.wait


def test_a_scheduled_run_behind_a_busy_worker_waits() -> None:
    assert decide(replace(LOST, tier_idle_for=0)).action == Action.wait


def test_a_worker_that_just_came_online_gets_a_few_seconds_to_take_the_run() -> None:
    assert decide(replace(LOST, tier_online_for=1)).action == Action.wait


def test_a_run_just_handed_out_is_not_lost_yet() -> None:
    assert decide(replace(LOST, waited=1)).action == Action.wait


def test_prefect_is_asked_only_when_the_run_could_have_been_lost() -> None:
    assert decide(replace(LOST, run_state=Unknown.not_asked)).action == Action.ask
    busy = replace(LOST, run_state=Unknown.not_asked, tier_idle_for=0)
    assert decide(busy).action == Action.wait


def test_prefect_unreachable_changes_nothing() -> None:
    assert decide(replace(LOST, run_state=Unknown.unreachable)).action == Action.wait


def test_a_run_its_worker_took_is_left_to_the_worker_while_it_may_still_start_the_take() -> None:
    for state in (StateType.PENDING, StateType.RUNNING):
        taken = replace(LOST, run_state=state, waited=STALLED_AFTER_SECONDS - 1)
        assert decide(taken).action == Action.wait  # taken a moment ago
        assert decide(replace(taken, waited=600, tier_idle_for=0)).action == Action.wait
        assert decide(replace(taken, waited=600, tier_online_for=0)).action == Action.wait


def test_a_run_its_worker_took_but_never_started_is_handed_out_anew() -> None:
    # Prefect went down as the worker took the run: the run stays PENDING, the take queued.
    for state in (StateType.PENDING, StateType.RUNNING):
        dropped = replace(LOST, run_state=state, waited=STALLED_AFTER_SECONDS,
                          tier_idle_for=STALLED_AFTER_SECONDS)
        decision = decide(dropped)
        assert decision.action == Action.submit
        assert "never started it" in decision.reason


def test_a_run_dropped_again_and_again_fails_with_the_reason() -> None:
    dropped = replace(LOST, run_state=StateType.PENDING, waited=600, hand_outs=2)
    decision = decide(dropped)
    assert decision.action == Action.fail
    assert "never started it" in decision.reason


def test_a_run_prefect_no_longer_knows_is_submitted_anew() -> None:
    assert decide(replace(LOST, run_state=None)).action == Action.submit


def test_each_hand_out_again_waits_longer_before_the_run_counts_as_lost() -> None:
    once = replace(LOST, hand_outs=1, waited=6, tier_idle_for=6)
    assert decide(once).action == Action.wait  # 2 x 4 s after the first hand-out again
    assert decide(replace(once, waited=9, tier_idle_for=9)).action == Action.requeue


def test_a_take_lost_too_often_fails_with_the_reason() -> None:
    decision = decide(replace(LOST, hand_outs=2))
    assert decision.action == Action.fail and "lost" in decision.reason


def test_a_reserved_take_never_handed_out_is_submitted_after_a_grace() -> None:
    fresh = replace(LOST, has_run=False, run_state=Unknown.not_asked, waited=1)
    assert decide(fresh).action == Action.wait
    assert decide(replace(fresh, waited=30)).action == Action.submit


def test_a_batch_take_waiting_for_its_batch_slot_is_never_handed_to_a_task_worker() -> None:
    waiting = replace(LOST, has_run=False, run_state=Unknown.not_asked, waited=3600, batch=True)
    assert decide(waiting).action == Action.wait


def test_a_take_being_handed_out_by_its_dispatcher_is_not_touched() -> None:
    busy = replace(LOST, has_run=False, waited=30, submitting=True)
    assert decide(busy).action == Action.wait


def test_a_queued_take_whose_run_was_cancelled_in_prefect_is_cancelled() -> None:
    assert decide(replace(LOST, run_state=StateType.CANCELLED)).action == Action.cancel


def test_a_queued_take_whose_run_failed_before_starting_fails() -> None:
    assert decide(replace(LOST, run_state=StateType.FAILED)).action == Action.fail


def test_a_cancel_request_for_a_queued_take_cancels_it() -> None:
    assert decide(replace(LOST, cancel_requested=True)).action == Action.cancel


GENERATING = Facts(status=TakeStatus.generating, has_run=True, run_state=Unknown.not_asked,
                   waited=10, tier_online_for=10, tier_idle_for=0, attempts=1)


def test_a_generating_take_with_a_live_worker_is_left_alone() -> None:
    assert decide(GENERATING).action == Action.wait


def test_a_take_whose_worker_died_is_retried_once() -> None:
    decision = decide(replace(GENERATING, worker_gone=True))
    assert decision.action == Action.retry and "attempt 1" in decision.reason


def test_a_take_whose_worker_died_on_the_retry_fails_with_the_reason() -> None:
    decision = decide(replace(GENERATING, worker_gone=True, attempts=MAX_ATTEMPTS))
    assert decision.action == Action.fail and "died" in decision.reason


def test_a_dead_workers_take_that_was_being_cancelled_is_cancelled_not_retried() -> None:
    dead = replace(GENERATING, worker_gone=True, cancel_requested=True)
    assert decide(dead).action == Action.cancel


def test_ended_takes_are_never_touched() -> None:
    for status in (TakeStatus.completed, TakeStatus.failed, TakeStatus.cancelled):
        assert decide(replace(LOST, status=status)).action == Action.wait


# The "lost" threshold is a setting (STUDIO_LOST_AFTER_SECONDS): a slow machine can wait longer
# before it calls a run lost, a fast one less; each hand-out again still waits one more period.

def test_a_longer_lost_threshold_leaves_a_scheduled_run_waiting_longer() -> None:
    sitting = replace(LOST, waited=6, tier_online_for=6, tier_idle_for=6)
    assert decide(sitting).action == Action.requeue  # the default: 4 s
    assert decide(sitting, lost_after=10).action == Action.wait
    assert decide(replace(sitting, waited=11, tier_online_for=11, tier_idle_for=11),
                  lost_after=10).action == Action.requeue


def test_a_shorter_lost_threshold_asks_prefect_sooner() -> None:
    sitting = replace(LOST, run_state=Unknown.not_asked, waited=2, tier_online_for=2,
                      tier_idle_for=2)
    assert decide(sitting).action == Action.wait
    assert decide(sitting, lost_after=1.5).action == Action.ask


def test_the_configured_threshold_grows_with_each_hand_out_again() -> None:
    again = replace(LOST, hand_outs=1, waited=15, tier_online_for=60, tier_idle_for=60)
    assert decide(again, lost_after=10).action == Action.wait  # 2 x 10 s
    assert decide(replace(again, waited=21), lost_after=10).action == Action.requeue


def test_the_lost_threshold_never_touches_a_take_with_no_worker_or_a_busy_one() -> None:
    for facts in (replace(LOST, tier_online_for=0), replace(LOST, tier_idle_for=0)):
        assert decide(facts, lost_after=0.5).action == Action.wait


def test_the_lost_threshold_is_read_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_LOST_AFTER_SECONDS", "9.5")
    assert Settings().lost_after_seconds == 9.5
    monkeypatch.delenv("STUDIO_LOST_AFTER_SECONDS")
    assert Settings().lost_after_seconds == LOST_AFTER_SECONDS


def test_a_lost_threshold_that_is_not_a_positive_number_is_refused_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in ("0", "-1", "soon"):
        monkeypatch.setenv("STUDIO_LOST_AFTER_SECONDS", raw)
        with pytest.raises(ValueError, match="STUDIO_LOST_AFTER_SECONDS"):
            Settings()
