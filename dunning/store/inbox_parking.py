"""The inbox's dead-letter state: an event whose dispatch keeps failing for a reason that
waiting will not fix is 'parked' with that reason, so it stops costing every sweep and
every redelivery, and waits for an operator.

    received --(failed dispatch, non-transient)--> attempts + 1, reason = the failure
             --(attempts reaches park_after)-----> parked (never swept, never dispatched)
    parked   --(retry: `dunning inbox retry`)----> received, attempts 0

Transient failures (Temporal or the database unreachable, a campaign still busy) are not
counted: they are waits, not faults. Reasons are scrubbed of email addresses by the
caller (dunning.scrub) and bounded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select, update

from dunning.store.schema import inbox
from dunning.store.store import Store

REASON_MAX = 500


@dataclass(frozen=True)
class Failed:
    status: str  # received (will be tried again) | parked | gone (the row was no longer 'received')
    attempts: int


@dataclass(frozen=True)
class ParkedRow:
    provider: str
    event_id: str
    event_type: str
    subscription_id: str | None
    occurred_at: datetime
    attempts: int
    reason: str


def dispatch_failed(store: Store, provider: str, event_id: str, reason: str, park_after: int) -> Failed:
    """Count one failed dispatch of a 'received' row; park it at `park_after` failures."""
    i = inbox.c
    where = (i.provider == provider) & (i.event_id == event_id) & (i.status == "received")
    stmt = (
        update(inbox)
        .where(where)
        .values(
            attempts=i.attempts + 1,
            reason=reason[:REASON_MAX],
            status=case((i.attempts + 1 >= park_after, "parked"), else_="received"),
        )
        .returning(i.status, i.attempts)
    )
    with store.write() as conn:
        row = conn.execute(stmt).first()
    return Failed(row.status, row.attempts) if row else Failed("gone", 0)


def parked(store: Store) -> list[ParkedRow]:
    """Every parked row, oldest event first."""
    i = inbox.c
    query = (
        select(i.provider, i.event_id, i.event_type, i.subscription_id, i.occurred_at, i.attempts, i.reason)
        .where(i.status == "parked")
        .order_by(i.occurred_at, i.id)
    )
    with store.engine.connect() as conn:
        return [ParkedRow(*row[:6], row.reason or "") for row in conn.execute(query).all()]


def retry(store: Store, provider: str, event_id: str) -> bool:
    """parked -> received with its count reset, for the sweep (or a redelivery) to take.
    False: no parked row by that id."""
    i = inbox.c
    stmt = (
        update(inbox)
        .where(i.provider == provider, i.event_id == event_id, i.status == "parked")
        .values(status="received", attempts=0)
    )
    with store.write() as conn:
        return conn.execute(stmt).rowcount == 1


def counts(store: Store) -> dict[str, int]:
    """How many inbox rows wait for a dispatch ('pending': received) and how many are parked."""
    i = inbox.c
    query = select(i.status, func.count()).where(i.status.in_(("received", "parked"))).group_by(i.status)
    with store.engine.connect() as conn:
        found: dict[str, int] = {status: n for status, n in conn.execute(query).all()}
    return {"pending": int(found.get("received", 0)), "parked": int(found.get("parked", 0))}
