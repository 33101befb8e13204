"""The reconciler's decision for one take, as a pure function of what is known about it.

Nothing here talks to Prefect or the disk: the reconciler gathers the facts, `decide` says what
to do, and every case has a unit test (tests/test_reconcile_decisions.py).

The rule that matters most: a take is handed to Prefect again only when Prefect's own state
says the run was lost — it is SCHEDULED while a worker of its tier has been online and idle
for a while (an idle worker takes a queued run within a second; one that sits there is no
longer in the server's in-memory queue, e.g. after a Prefect restart). A dropped event stream,
a busy worker or a tier with no worker never re-submits anything, and a take never fails for
want of a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prefect.client.schemas.objects import StateType

from studio.manifest import TakeStatus

# A SCHEDULED run this old, with an idle worker online this long, is not in Prefect's queue.
LOST_AFTER_SECONDS = 4.0
# A reserved take not handed to Prefect after this long lost its dispatcher (or Prefect was
# down when it tried): it is submitted by the reconciler.
SUBMIT_AFTER_SECONDS = 10.0
# A queued take whose run a worker took (PENDING or RUNNING) but never started, with its tier
# idle this long since: the worker failed before the take (Prefect unreachable for that moment,
# as in a restart) or died, and Prefect keeps the run PENDING forever. A worker that took a run
# starts its take within seconds; this leaves a loaded machine ample room.
STALLED_AFTER_SECONDS = 30.0
MAX_ATTEMPTS = 2  # a take whose worker died is retried once
MAX_HAND_OUTS = 3  # a run Prefect lost is handed out again at most this many times


class Unknown(StrEnum):
    not_asked = "not_asked"  # the caller has not read the run's state (yet)
    unreachable = "unreachable"  # Prefect did not answer


class Action(StrEnum):
    wait = "wait"  # nothing to do now
    ask = "ask"  # read the run's state from Prefect, then decide again
    submit = "submit"  # a new task run for the take (none exists, or Prefect forgot it)
    requeue = "requeue"  # the same task run back on Prefect's queue
    retry = "retry"  # its worker died: crash the run, queue the take again (next attempt)
    fail = "fail"
    cancel = "cancel"


@dataclass(frozen=True)
class Facts:
    status: TakeStatus
    has_run: bool  # a task run id is recorded
    run_state: StateType | Unknown | None  # None: Prefect does not know the run
    waited: float  # seconds since it was (last) handed out, or reserved
    tier_online_for: float  # seconds its tier has had a worker; 0 when none
    tier_idle_for: float  # seconds since its tier last rendered anything
    worker_gone: bool = False  # generating, and its worker is dead (lease)
    cancel_requested: bool = False
    attempts: int = 0
    hand_outs: int = 0
    submitting: bool = False  # this process is handing it out right now
    batch: bool = False  # reserved by a batch run, which renders it itself


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


WAIT = Decision(Action.wait)


def decide(f: Facts, lost_after: float = LOST_AFTER_SECONDS,
           submit_after: float = SUBMIT_AFTER_SECONDS) -> Decision:
    if f.status == TakeStatus.generating:
        return _generating(f)
    if f.status != TakeStatus.queued:
        return WAIT
    if f.cancel_requested:
        return Decision(Action.cancel, "cancelled while queued")
    if f.submitting:
        return WAIT
    if not f.has_run:
        # A batch's take starts in the batch's own process once a slot is free: a task worker
        # handed it too would render it twice (the batch's copy then fails as already done).
        if f.batch or f.waited < submit_after:
            return WAIT
        return Decision(Action.submit, "reserved but never handed to Prefect")
    # Each hand-out again waits longer: on a loaded machine a worker may take seconds to pick up
    # a run, and a copy handed out while the first is still queued is only a wasted delivery.
    lost_after = lost_after * (1 + f.hand_outs)
    if f.run_state == Unknown.not_asked:
        # Only a run that could have been lost is worth a question to Prefect.
        idle = min(f.tier_online_for, f.tier_idle_for, f.waited) >= lost_after
        return Decision(Action.ask) if idle else WAIT
    if f.run_state == Unknown.unreachable:
        return WAIT
    if f.run_state is None:
        return Decision(Action.submit, "Prefect no longer knows its task run")
    if f.run_state == StateType.SCHEDULED:
        idle = min(f.tier_online_for, f.tier_idle_for, f.waited) >= lost_after
        if not idle:
            return WAIT  # no worker, or a busy one: it waits in Prefect's queue
        if f.hand_outs + 1 >= MAX_HAND_OUTS:
            return Decision(Action.fail, f"Prefect lost its task run {f.hand_outs + 1} times")
        return Decision(Action.requeue, "Prefect lost it from its queue (a restart?)")
    if f.run_state == StateType.CANCELLED:
        return Decision(Action.cancel, "its task run was cancelled in Prefect")
    if f.run_state == StateType.CRASHED:
        if f.attempts >= MAX_ATTEMPTS or f.hand_outs + 1 >= MAX_HAND_OUTS:
            return Decision(Action.fail, "its task run crashed before the take started")
        return Decision(Action.submit, "its task run crashed before the take started")
    if f.run_state == StateType.FAILED:
        return Decision(Action.fail, "its task run failed before the take started")
    if f.run_state == StateType.COMPLETED:
        # The run ended without starting the take (a copy skipped it): run it anew.
        if f.hand_outs + 1 >= MAX_HAND_OUTS:
            return Decision(Action.fail, "its task run ended without rendering it")
        return Decision(Action.submit, "its task run ended without rendering it")
    if f.run_state in (StateType.PENDING, StateType.RUNNING):
        # A worker took the run: it records the take itself within seconds. With one run at a
        # time per worker, a tier idle all along means the worker dropped it.
        stalled = max(lost_after, STALLED_AFTER_SECONDS)
        if min(f.tier_online_for, f.tier_idle_for, f.waited) < stalled:
            return WAIT
        reason = f"its worker took its task run but never started it ({f.run_state.value})"
        if f.hand_outs + 1 >= MAX_HAND_OUTS:
            return Decision(Action.fail, reason)
        return Decision(Action.submit, reason)
    return WAIT


def _generating(f: Facts) -> Decision:
    if not f.worker_gone:
        return WAIT
    if f.cancel_requested:
        return Decision(Action.cancel, "cancelled while its worker died")
    if f.attempts < MAX_ATTEMPTS:
        return Decision(Action.retry, f"its worker died during attempt {f.attempts}")
    return Decision(Action.fail, f"its worker died during attempt {f.attempts} of "
                                 f"{MAX_ATTEMPTS}")
