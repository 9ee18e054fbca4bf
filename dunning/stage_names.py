"""PURE: a campaign's stage key in words, for ops (Temporal UI details, `dunning campaign list`).

The DunningStage search attribute keeps the key itself (`first_notice`, `shadow:retry@3d`,
`needs_attention`, `exhausted`): it is what ops and tests filter on, it is the same for
every code version, and it needs no plan to be read. These words are derived from it
when shown, so they can change without touching any workflow history:

    first_notice              first notice
    class:update_payment_method  email: update payment method
    retry@3d                  retry 2 of 4 (day 3)        (with the plan's retry days)
    retry@pm1795374994        retry after a payment method update (day 2.5)
    level:limited@7d          consequence: limited (day 7)
    exhaust                   end of the grace period
    shadow:first_notice       shadow: first notice
    needs_attention           needs attention
    recovered_after_cancel    recovered after cancel

Unknown keys (a step named in dunning.toml, a future key) are shown with `_` as spaces.
Nothing here reads a clock or any I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

SHADOW = "shadow:"
MAX_WORDS = 120  # a stage is a bounded word; an odd key is shown cut, never whole

_FIXED = {
    "starting": "starting",
    "pending": "waiting for the first action",
    "needs_attention": "needs attention",
    "exhaust": "end of the grace period",
    "recovered": "recovered",
    "resolved": "resolved",
    "exhausted": "exhausted",
    "recovered_after_cancel": "recovered after cancel",
}
_RETRY_DAY = re.compile(r"^retry@(?P<day>\d+(?:\.\d+)?(?:e[+-]?\d+)?)d$")
_RETRY_PM = re.compile(r"^retry@pm(?P<ts>-?\d{1,12})$")
_LEVEL = re.compile(r"^level:(?P<level>[^@]+)@(?P<day>\d+(?:\.\d+)?(?:e[+-]?\d+)?)d$")
_CLASS = "class:"

OUTCOMES = ("recovered", "resolved", "exhausted", "recovered_after_cancel")


def words(
    key: str,
    *,
    retry_days: Sequence[float] = (),
    anchor: datetime | None = None,
    day_seconds: float | None = None,
) -> str:
    """The stage `key` in words. `retry_days` (the plan's retry days for the campaign's
    decline class) numbers a retry (`retry 2 of 4`); `anchor` and `day_seconds` give the
    day of a retry after a payment method update. Without them the words say less."""
    if key.startswith(SHADOW):
        return "shadow: " + words(key[len(SHADOW) :], retry_days=retry_days, anchor=anchor, day_seconds=day_seconds)
    if key in _FIXED:
        return _FIXED[key]
    if m := _RETRY_DAY.match(key):
        day = float(m["day"])
        days = list(retry_days)
        if day in days:
            return f"retry {days.index(day) + 1} of {len(days)} (day {day:g})"
        return f"retry (day {day:g})"
    if m := _RETRY_PM.match(key):
        text = "retry after a payment method update"
        day_of = _day_of(int(m["ts"]), anchor, day_seconds)
        return f"{text} (day {day_of})" if day_of is not None else text
    if m := _LEVEL.match(key):
        return f"consequence: {_plain(m['level'])} (day {float(m['day']):g})"
    if key.startswith(_CLASS):
        return f"email: {_plain(key[len(_CLASS) :])}"
    return _plain(key) or "-"


def _day_of(ts: int, anchor: datetime | None, day_seconds: float | None) -> str | None:
    if anchor is None or not day_seconds or day_seconds <= 0:
        return None
    if anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=UTC)
    days = (ts - anchor.timestamp()) / day_seconds
    return f"{max(days, 0.0):.1f}".removesuffix(".0")


def _plain(text: str) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in text.replace("_", " ")).strip()
    return shown if len(shown) <= MAX_WORDS else shown[: MAX_WORDS - 1] + "…"


def outcome_words(outcome: str) -> str:
    """An end (or `running`) in words."""
    return _FIXED.get(outcome, _plain(outcome) or "-")
