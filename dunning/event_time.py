"""PURE: is a provider's event time believable? An event dated in the future (beyond a
small clock skew) would pin the projection: no real later event could ever be newer. One
older than the horizon would start a campaign that is due, exhausted and cancelled at
once. Both are refused at the webhook boundary (settings `event_max_skew_seconds`,
default 300, and `event_horizon_days`, default 90); `now` is passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def out_of_range(occurred_at: datetime, now: datetime, *, max_skew_seconds: float, horizon_days: float) -> str | None:
    """Why `occurred_at` is refused, naming the time and the bound it broke (None: fine)."""
    at = occurred_at.isoformat()
    latest = now + timedelta(seconds=max_skew_seconds)
    if occurred_at > latest:
        ahead = (occurred_at - now).total_seconds()
        return (
            f"event time {at} is {_span(ahead)} in the future; at most {max_skew_seconds:g}s of clock skew "
            f"is accepted (latest {latest.isoformat(timespec='seconds')}, event_max_skew_seconds)"
        )
    earliest = now - timedelta(days=horizon_days)
    if occurred_at < earliest:
        return (
            f"event time {at} is older than the {horizon_days:g}-day horizon "
            f"(earliest {earliest.isoformat(timespec='seconds')}, event_horizon_days)"
        )
    return None


def _span(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds:.0f}s"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f} days"
