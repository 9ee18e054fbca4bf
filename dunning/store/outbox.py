"""The durable outbox of events for host apps (table `outbound_events`).

`enqueue` is called inside the transaction that writes the fact the event reports (the
ledger row), so an event exists exactly when its fact does. Delivery is a separate,
retrying process (`starter.outbound`): a receiver that is down never blocks a campaign,
and gets every event when it returns, in order per subscription, each once by id.

The deliverer's side: `claim_due` takes each subscription's earliest pending event when
it is due (never a later one while an earlier one is pending) and leases it, so two
deliverers never POST the same event at once; `mark_delivered` / `mark_failed` /
`release` end an attempt; `list_events` and `outbox_counts` are for the CLI and /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.engine import Connection

from dunning.contracts import OutboundEvent
from dunning.store.schema import outbound_events
from dunning.store.store import Store


def event_id(event: OutboundEvent) -> str:
    """Stable id of one event: hosts dedupe by it; the same fact always has the same id."""
    key = event.data.get("key") or ""
    return f"{event.subscription_id}:{int(event.campaign_started_at.timestamp() * 1e6)}:{event.type}:{key}"


def enqueue(store: Store, conn: Connection, event: OutboundEvent) -> None:
    """Add the event in the caller's transaction; nothing when it is already there."""
    now = datetime.now(UTC)
    conn.execute(
        store.insert(outbound_events)
        .values(
            event_id=event_id(event),
            type=event.type,
            subscription_id=event.subscription_id,
            payload=event.model_dump(mode="json"),
            created_at=now,
            status="pending",
            attempts=0,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=[outbound_events.c.event_id])
    )


# --- delivery (starter.outbound) -------------------------------------------------------
@dataclass(frozen=True)
class OutboxRow:
    """One outbound event as the deliverer and `dunning outbound list` see it."""

    id: int
    event_id: str
    type: str
    subscription_id: str
    payload: dict[str, Any]
    created_at: datetime
    status: str  # pending | delivered
    attempts: int  # delivery attempts started (the successful one included)
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_error: str | None


def _row(r: Any) -> OutboxRow:
    o = outbound_events.c
    return OutboxRow(*(getattr(r, c.name) for c in (
        o.id, o.event_id, o.type, o.subscription_id, o.payload, o.created_at, o.status, o.attempts,
        o.next_attempt_at, o.delivered_at, o.last_error,
    )))  # fmt: skip


def _heads():
    """Pending rows with no earlier pending row of the same subscription: the only ones that
    may be delivered, so a subscription's events go out strictly in order."""
    o = outbound_events.c
    earlier = outbound_events.alias("earlier")
    e = earlier.c
    blocked = exists().where(e.subscription_id == o.subscription_id, e.status == "pending", e.id < o.id)
    return select(outbound_events).where(o.status == "pending", ~blocked)


def claim_due(store: Store, now: datetime, limit: int, lease: timedelta) -> list[OutboxRow]:
    """Claim up to `limit` due events, at most one per subscription (its earliest pending
    one), in one transaction: each claimed row counts an attempt and is not due again
    until `now + lease` (so another deliverer skips it, and a deliverer that dies mid-POST
    leaves it to be retried then). Claimed rows are returned as they are after the claim."""
    o = outbound_events.c
    claimed = []
    with store.write() as conn:
        rows = conn.execute(_heads().where(o.next_attempt_at <= now).order_by(o.id).limit(limit)).all()
        for r in rows:
            # Conditional: a concurrent deliverer that claimed it first moved next_attempt_at.
            done = conn.execute(
                update(outbound_events)
                .where(o.id == r.id, o.status == "pending", o.next_attempt_at <= now)
                .values(attempts=o.attempts + 1, next_attempt_at=now + lease)
            )
            if done.rowcount == 1:
                claimed.append(replace(_row(r), attempts=r.attempts + 1, next_attempt_at=now + lease))
    return claimed


def mark_delivered(store: Store, id: int, now: datetime) -> None:
    o = outbound_events.c
    with store.write() as conn:
        conn.execute(
            update(outbound_events)
            .where(o.id == id, o.status == "pending")
            .values(status="delivered", delivered_at=now, last_error=None)
        )


def mark_failed(store: Store, id: int, retry_at: datetime, error: str) -> None:
    """The attempt failed: due again at `retry_at`; `error` is bounded text (status code or
    exception type and where), never a response body."""
    o = outbound_events.c
    with store.write() as conn:
        conn.execute(
            update(outbound_events)
            .where(o.id == id, o.status == "pending")
            .values(next_attempt_at=retry_at, last_error=error[:500])
        )


def release(store: Store, id: int, now: datetime) -> None:
    """An attempt interrupted by shutdown: due again now, not after the lease."""
    o = outbound_events.c
    with store.write() as conn:
        conn.execute(update(outbound_events).where(o.id == id, o.status == "pending").values(next_attempt_at=now))


def list_events(store: Store, pending_only: bool = False, limit: int = 100) -> list[OutboxRow]:
    """The newest `limit` events (or pending ones), oldest first."""
    o = outbound_events.c
    query = select(outbound_events)
    if pending_only:
        query = query.where(o.status == "pending")
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(o.id.desc()).limit(limit)).all()
    return [_row(r) for r in reversed(rows)]


def outbox_counts(store: Store, now: datetime | None = None) -> dict[str, Any]:
    """For /metrics: {"pending": n, "delivered": n, "oldest_pending_age_seconds": s | None}."""
    now = now or datetime.now(UTC)
    o = outbound_events.c
    with store.engine.connect() as conn:
        counts: dict[str, int] = {s: n for s, n in conn.execute(select(o.status, func.count()).group_by(o.status))}
        oldest = conn.execute(
            select(o.created_at).where(o.status == "pending").order_by(o.created_at).limit(1)
        ).scalar()
    return {
        "pending": counts.get("pending", 0),
        "delivered": counts.get("delivered", 0),
        "oldest_pending_age_seconds": max(0.0, (now - oldest).total_seconds()) if oldest is not None else None,
    }
