"""PURE: what is due next in a campaign, and when.

Every offset is absolute from the anchor (the provider time of the failure). A step's
boundary is `anchor + after_days * day_seconds`. The resolver is told which steps are
already handled (sent or skipped) and answers with the next one:

* among the steps after the last handled one, those whose boundary is at or before
  `now` are due; only the latest of them is sent (with no delay) and the earlier ones
  are reported as `skipped` — a campaign that starts two weeks late sends the final
  notice, not three emails at once;
* otherwise the first future step, with delay = boundary - now (never negative);
* when every step is handled, the campaign waits for the end of the grace period
  (`exhaust`), and after that it is done.

Nothing here reads a clock: `now` is passed in (the workflow passes `workflow.now()`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dunning.contracts import CampaignPlan, StepSpec

EXHAUST = "exhaust"
_ZERO = timedelta(0)


@dataclass(frozen=True)
class Due:
    key: str
    kind: str  # "email" | "exhaust"
    at: datetime
    delay: timedelta
    skipped: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Done:
    pass


def boundary(anchor: datetime, after_days: float, day_seconds: float) -> datetime:
    return anchor + timedelta(seconds=after_days * day_seconds)


def next_step(
    steps: Sequence[StepSpec],
    anchor: datetime,
    now: datetime,
    day_seconds: float,
    handled: Collection[str] = (),
) -> Due | Done:
    """The next email step after the handled ones, or Done when none is left."""
    last = max((i for i, s in enumerate(steps) if s.key in handled), default=-1)
    pending = steps[last + 1 :]
    due = [s for s in pending if boundary(anchor, s.after_days, day_seconds) <= now]
    if due:
        step = due[-1]
        at = boundary(anchor, step.after_days, day_seconds)
        return Due(step.key, "email", at, _ZERO, tuple(s.key for s in due[:-1]))
    if pending:
        step = pending[0]
        at = boundary(anchor, step.after_days, day_seconds)
        return Due(step.key, "email", at, max(at - now, _ZERO))
    return Done()


def next_action(plan: CampaignPlan, anchor: datetime, now: datetime, handled: Collection[str]) -> Due | Done:
    """The whole timeline: every step, then the end of the grace period."""
    step = next_step(plan.steps, anchor, now, plan.day_seconds, handled)
    if isinstance(step, Due):
        return step
    if EXHAUST in handled:
        return Done()
    at = boundary(anchor, plan.grace_days, plan.day_seconds)
    return Due(EXHAUST, EXHAUST, at, max(at - now, _ZERO))


def describe(due: Due | Done) -> str:
    """Current details for the Temporal UI, in words."""
    if isinstance(due, Done):
        return "Campaign finished."
    when = due.at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if due.kind == EXHAUST:
        return f"All steps sent. Grace period ends {when}: the campaign ends exhausted unless payment is recovered."
    return f"Next: send the '{due.key}' email at {when}, unless payment is recovered first."
