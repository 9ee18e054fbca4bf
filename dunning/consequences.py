"""PURE: the graduated-consequence ladder, evaluated like an overdue state machine.

Rules are ordered from most severe; the first whose conditions all hold wins:
days since the anchor >= `min_days`, optionally the campaign's decline class, optionally
amount due >= `min_amount_due`. Every subscription starts a campaign at `full`.
"""

from __future__ import annotations

from collections.abc import Sequence

from datetime import datetime

from dunning.contracts import ConsequenceRule, GuardResult

START_LEVEL = "full"


def level_at(ladder: Sequence[ConsequenceRule], days: float, decline_class: str | None, amount_due: int | None) -> str:
    for rule in ladder:
        if days < rule.min_days:
            continue
        if rule.decline_class is not None and rule.decline_class != decline_class:
            continue
        if rule.min_amount_due is not None and (amount_due is None or amount_due < rule.min_amount_due):
            continue
        return rule.level
    return START_LEVEL


def changes(
    ladder: Sequence[ConsequenceRule], decline_class: str | None, amount_due: int | None, until_days: float
) -> list[tuple[float, str]]:
    """(days, level) at each point within the campaign where the level changes."""
    out: list[tuple[float, str]] = []
    current = START_LEVEL
    for days in sorted({0.0, *(r.min_days for r in ladder)}):
        if days > until_days:
            break
        level = level_at(ladder, days, decline_class, amount_due)
        if level != current:
            out.append((days, level))
            current = level
    return out


def end_state(outcome: str, reason: str, on_exhaustion: str) -> tuple[str, str]:
    """(subscription status, entitlement) a campaign leaves behind."""
    if outcome == "recovered":
        return "active", START_LEVEL  # restored at once
    if outcome == "resolved":  # nothing more is owed through this campaign
        return ("canceled" if "cancel" in reason else "active"), START_LEVEL
    return ("unpaid" if on_exhaustion == "mark_unpaid" else "canceled"), "canceled"


def guard_decision(sub, campaign_started_at: datetime) -> GuardResult:
    """Is the campaign begun at `campaign_started_at` still wanted, given the projection?"""
    if sub is None:
        return GuardResult(proceed=False, reason="subscription not found", outcome="resolved")
    if sub.status == "active":
        return GuardResult(proceed=False, reason="subscription is active", outcome="recovered")
    if sub.status != "past_due":  # canceled, uncollectible, unpaid: ended without payment
        return GuardResult(proceed=False, reason=f"subscription is {sub.status}", outcome="resolved")
    if sub.dunning_campaign_started_at != campaign_started_at:
        return GuardResult(proceed=False, reason="campaign anchor changed", outcome="resolved")
    return GuardResult(proceed=True)
