"""PURE: the graduated-consequence ladder, evaluated like an overdue state machine.

Rules are ordered from most severe; the first whose conditions all hold wins:
days since the anchor >= `min_days`, optionally the campaign's decline class, optionally
amount due >= `min_amount_due`. Every subscription starts a campaign at `full`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dunning.contracts import ConsequenceRule

START_LEVEL = "full"


def first_match(
    ladder: Sequence[ConsequenceRule], days: float, decline_class: str | None, amount_due: int | None
) -> int | None:
    """Index of the first rung whose conditions all hold (None: none does)."""
    for i, rule in enumerate(ladder):
        if days < rule.min_days:
            continue
        if rule.decline_class is not None and rule.decline_class != decline_class:
            continue
        if rule.min_amount_due is not None and (amount_due is None or amount_due < rule.min_amount_due):
            continue
        return i
    return None


def level_at(ladder: Sequence[ConsequenceRule], days: float, decline_class: str | None, amount_due: int | None) -> str:
    i = first_match(ladder, days, decline_class, amount_due)
    return START_LEVEL if i is None else ladder[i].level


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
