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

The whole campaign is several such lanes on one timeline — engine-driven payment
retries, the consequence ladder, the email for the current decline class, the email
steps — each resolved by the same rule; `next_action` answers the earliest of them, and
at one instant a retry goes first (it may recover the payment and make the rest moot),
then a consequence change, then emails.

Nothing here reads a clock: `now` is passed in (the workflow passes `workflow.now()`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from dunning import consequences
from dunning.contracts import BillingEvent, CampaignPlan, EventKind, StepSpec

EXHAUST = "exhaust"
_ZERO = timedelta(0)
KIND_ORDER = ("retry", "consequence", "email", EXHAUST)


@dataclass(frozen=True)
class Due:
    key: str
    kind: str  # "retry" | "consequence" | "email" | "exhaust"
    at: datetime
    delay: timedelta
    skipped: tuple[str, ...] = field(default=())
    detail: str = ""  # the template of an email, the level of a consequence


@dataclass(frozen=True)
class Situation:
    """What the campaign knows beyond its plan; changed by billing events and retries."""

    decline_class: str = "unknown"
    amount_due: int | None = None
    method_updated_at: datetime | None = None
    last_retry_at: datetime | None = None  # retry days at or before it are moot (no catch-up charge)


@dataclass(frozen=True)
class Done:
    pass


def boundary(anchor: datetime, after_days: float, day_seconds: float) -> datetime:
    return anchor + timedelta(seconds=after_days * day_seconds)


def observe(situation: Situation, event: BillingEvent) -> Situation:
    """What a later billing event changes in the campaign's situation."""
    changes: dict = {}
    if event.kind in (EventKind.payment_failed, EventKind.payment_action_required):
        # the provider just tried the card: no engine catch-up charge for days before it
        if situation.last_retry_at is None or event.occurred_at > situation.last_retry_at:
            changes["last_retry_at"] = event.occurred_at
        if event.decline_class:
            changes["decline_class"] = event.decline_class
    if event.amount_due is not None:
        changes["amount_due"] = event.amount_due
    if event.kind == EventKind.payment_method_updated:
        changes["method_updated_at"] = event.occurred_at
    return replace(situation, **changes)


def lane_next(lane: Sequence[Due], now: datetime, handled: Collection[str]) -> Due | None:
    """One lane (items in time order): the latest due item after the last handled one,
    earlier due ones skipped; else the first future one; None when nothing is left."""
    last = max((i for i, d in enumerate(lane) if d.key in handled), default=-1)
    pending = lane[last + 1 :]
    due = [d for d in pending if d.at <= now]
    if due:
        return Due(due[-1].key, due[-1].kind, due[-1].at, _ZERO, tuple(d.key for d in due[:-1]), due[-1].detail)
    if pending:
        first = pending[0]
        return Due(first.key, first.kind, first.at, max(first.at - now, _ZERO), (), first.detail)
    return None


def next_step(
    steps: Sequence[StepSpec],
    anchor: datetime,
    now: datetime,
    day_seconds: float,
    handled: Collection[str] = (),
) -> Due | Done:
    """The next email step after the handled ones, or Done when none is left."""
    lane = [Due(s.key, "email", boundary(anchor, s.after_days, day_seconds), _ZERO, (), s.template) for s in steps]
    return lane_next(lane, now, handled) or Done()


def lanes(plan: CampaignPlan, anchor: datetime, situation: Situation) -> list[list[Due]]:
    """Every lane of the campaign's timeline for what is known now."""
    day = plan.day_seconds
    policy = plan.retry_policies.get(situation.decline_class)
    out: list[list[Due]] = []
    if plan.retries_mode == "engine" and policy is not None:
        last = situation.last_retry_at
        days = [d for d in policy.days if last is None or boundary(anchor, d, day) > last]
        out.append([Due(f"retry@{d:g}d", "retry", boundary(anchor, d, day), _ZERO) for d in days])
        if situation.method_updated_at is not None and policy.retry_on_method_update:
            at = max(situation.method_updated_at, anchor)
            out.append([Due(f"retry@pm{int(at.timestamp())}", "retry", at, _ZERO)])
    ladder = consequences.changes(plan.ladder, situation.decline_class, situation.amount_due, plan.grace_days)
    out.append([Due(f"level:{lvl}@{d:g}d", "consequence", boundary(anchor, d, day), _ZERO, (), lvl) for d, lvl in ladder])
    steps = plan.steps
    if policy is not None and policy.email:
        out.append([Due(f"class:{policy.email}", "email", anchor, _ZERO, (), policy.email)])
        steps = [s for s in steps if s.after_days > 0]  # the class email is the day-0 notice
    out.append([Due(s.key, "email", boundary(anchor, s.after_days, day), _ZERO, (), s.template) for s in steps])
    return out


def next_action(
    plan: CampaignPlan,
    anchor: datetime,
    now: datetime,
    handled: Collection[str],
    situation: Situation | None = None,
) -> Due | Done:
    """The whole timeline: retries, consequences and emails, then the end of the grace period."""
    candidates = [d for lane in lanes(plan, anchor, situation or Situation()) if (d := lane_next(lane, now, handled))]
    if candidates:
        return min(candidates, key=lambda d: (d.delay, KIND_ORDER.index(d.kind)))
    if EXHAUST in handled:
        return Done()
    at = boundary(anchor, plan.grace_days, plan.day_seconds)
    return Due(EXHAUST, EXHAUST, at, max(at - now, _ZERO))


# --- catching up after an outage (the worker or Temporal was down past a due time) ------
# A timer that fires late makes the campaign plan again at the time it wakes. Of several
# due items of one lane only the latest is performed (`lane_next`); the earlier ones are
# recorded as skipped with SKIP_SUPERSEDED. So a missed retry day gets one catch-up charge,
# never several at once, and the entitlement jumps to the rung that holds now. An email
# performed late must still tell the truth about the deadline it names (the end of the
# grace period): one that would leave the customer less than half of min(one day, the
# notice the plan gave it) is skipped (SKIP_NOTICE_TOO_SHORT; SKIP_DEADLINE_PASSED once
# the end has passed); the exhaustion follows and the host app is told. An email on time
# (or late by less than ON_TIME of a day: timers are never exact; or by no more than the
# plan's late_tolerance_seconds: the engine's own lateness under load) is never skipped.
SKIP_SUPERSEDED = "superseded_by_later"
SKIP_DEADLINE_PASSED = "deadline_passed"
SKIP_NOTICE_TOO_SHORT = "notice_too_short"
ON_TIME = 0.01  # of a day


def on_time_within(plan: CampaignPlan) -> timedelta:
    """Lateness that counts as on time: 1% of a day, or the engine's own lateness
    (`late_tolerance_seconds`), whichever is longer."""
    return max(timedelta(seconds=plan.day_seconds) * ON_TIME, timedelta(seconds=plan.late_tolerance_seconds))


def planning_now(plan: CampaignPlan, now: datetime) -> datetime:
    """The clock the catch-up rules read: `now` less the engine's own lateness, so that an
    action is superseded only by a later one that was due before the engine could be busy
    (an outage), never by one that fell due while a busy worker was catching up."""
    return now - timedelta(seconds=plan.late_tolerance_seconds)


def skip_reason(due: Due, now: datetime, plan: CampaignPlan, anchor: datetime) -> str | None:
    """Why the due action must not be performed now (None: perform it, maybe late)."""
    day = timedelta(seconds=plan.day_seconds)
    if due.kind != "email" or now - due.at <= on_time_within(plan):
        return None
    end = boundary(anchor, plan.grace_days, plan.day_seconds)
    if now >= end:
        return SKIP_DEADLINE_PASSED
    if end - now < min(day, max(end - due.at, _ZERO)) / 2:
        return SKIP_NOTICE_TOO_SHORT
    return None


def describe(due: Due | Done) -> str:
    """Current details for the Temporal UI, in words."""
    if isinstance(due, Done):
        return "Campaign finished."
    when = due.at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if due.kind == EXHAUST:
        return f"All steps sent. Grace period ends {when}: the campaign ends exhausted unless payment is recovered."
    if due.kind == "retry":
        return f"Next: retry the payment at {when}."
    if due.kind == "consequence":
        return f"Next: entitlement becomes '{due.detail}' at {when}, unless payment is recovered first."
    return f"Next: send the '{due.detail}' email at {when}, unless payment is recovered first."
