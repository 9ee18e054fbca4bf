"""Grouped counts of the store for the Prometheus scrape (`starter.api_metrics`).

    ledger_groups    ledger rows of the campaign types per (type, provider, mode, status,
                     decline_class, level): one scan of those types
    campaign_ends    campaign ends per (outcome, provider), the provider read from the
                     campaign's `dunning.campaign_started` row ("unknown" without one)
    entitlements     subscriptions per entitlement level
    dispatch_failures  failed dispatches (inbox `attempts`) per (provider, status) of the
                     rows still waiting ('received') or parked

Values are returned as stored (None for a missing JSON field); the caller maps them onto
closed label sets. One read transaction per call, so a scrape sees one state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select
from sqlalchemy.orm import aliased

from dunning.store.schema import dunning_events, inbox, subscriptions
from dunning.store.store import _READ, Store

STARTED = "dunning.campaign_started"
ENDS = ("dunning.recovered", "dunning.resolved", "dunning.exhausted", "dunning.recovered_after_cancel")
GROUPED = (
    STARTED,
    "dunning.step_sent",
    "dunning.action_skipped",
    "dunning.action_failed",
    "dunning.retry_attempted",
    "dunning.consequence_changed",
)
FIELDS = ("provider", "mode", "status", "decline_class", "level")


@dataclass(frozen=True)
class MetricCounts:
    # (type, provider, mode, status, decline_class, level) -> rows
    ledger: dict[tuple[str | None, ...], int]
    ends: dict[tuple[str, str | None], int]  # (outcome, provider) -> campaigns ended
    entitlements: dict[str, int]  # level -> subscriptions
    dispatch_failures: dict[tuple[str, str], int]  # (provider, status) -> failed dispatches


def _ledger_groups(conn: Connection) -> dict[tuple[str | None, ...], int]:
    e = dunning_events.c
    cols = [e.data[name].as_string().label(f"k_{name}") for name in FIELDS]
    query = select(e.type, *cols, func.count()).where(e.type.in_(GROUPED)).group_by(e.type, *cols)
    return {tuple(row[:-1]): int(row[-1]) for row in conn.execute(query).all()}


def _ends(conn: Connection) -> dict[tuple[str, str | None], int]:
    e, start = dunning_events.c, aliased(dunning_events)
    provider = start.c.data["provider"].as_string().label("k_provider")
    joined = dunning_events.outerjoin(
        start,
        and_(
            start.c.subscription_id == e.subscription_id,
            start.c.campaign_started_at == e.campaign_started_at,
            start.c.type == STARTED,
        ),
    )
    query = select(e.type, provider, func.count()).select_from(joined).where(e.type.in_(ENDS))
    rows = conn.execute(query.group_by(e.type, provider)).all()
    return {(str(t).removeprefix("dunning."), p): int(n) for t, p, n in rows}


def _entitlements(conn: Connection) -> dict[str, int]:
    s = subscriptions.c
    rows = conn.execute(select(s.entitlement, func.count()).group_by(s.entitlement)).all()
    return {str(level): int(n) for level, n in rows}


def _dispatch_failures(conn: Connection) -> dict[tuple[str, str], int]:
    i = inbox.c
    query = (
        select(i.provider, i.status, func.coalesce(func.sum(i.attempts), 0))
        .where(i.status.in_(("received", "parked")))
        .group_by(i.provider, i.status)
    )
    return {(str(p), str(s)): int(n) for p, s, n in conn.execute(query).all()}


def metric_counts(store: Store) -> MetricCounts:
    """Every grouped count above, in one read transaction (synchronous: call it in a thread)."""
    reader: Any = store.engine.execution_options(**{_READ: True})
    with reader.connect() as conn, conn.begin():
        return MetricCounts(_ledger_groups(conn), _ends(conn), _entitlements(conn), _dispatch_failures(conn))
