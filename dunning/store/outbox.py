"""The durable outbox of events for host apps (table `outbound_events`).

`enqueue` is called inside the transaction that writes the fact the event reports (the
ledger row), so an event exists exactly when its fact does. Delivery is a separate,
retrying process (`starter.outbound`): a receiver that is down never blocks a campaign,
and gets every event when it returns, in order per subscription, each once by id.
"""

from __future__ import annotations

from datetime import UTC, datetime

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
