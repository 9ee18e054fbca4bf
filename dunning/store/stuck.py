"""What is stuck, for /metrics and `dunning doctor`: work that started and never finished,
older than the in-flight window (`[recompute] in_flight_window_seconds`).

    payments in flight   a charge started whose result was never recorded:
                         retry    a campaign's payment retry claimed (step_deliveries row
                                  `retry@...` still 'claimed')
                         bad_debt a pay-bad-debt attempt (`bad_debt.payment_claimed`) with
                                  neither `bad_debt.payment_failed` nor `bad_debt.exited`
                         provider the fake provider's account still `processing`
    unconfirmed steps    any other claimed effect never confirmed: an email, the
                         terminal action (cancel / mark unpaid)
    parked events        inbox rows parked after repeated failed dispatches (any age)

Counts are exact; each list holds at most `limit` entries, oldest first. Ids only: no
email address or name (a parked row's reason is scrubbed once more).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, exists, func, select
from sqlalchemy.orm import aliased

from dunning.providers.fake_account import fake_subscriptions
from dunning.scrub import scrub
from dunning.store.bad_debt import CLAIMED, EXITED, FAILED
from dunning.store.schema import dunning_events, inbox, step_deliveries
from dunning.store.store import _READ, Store, _utc

RETRY_KEYS = "retry@%"  # a payment retry's effect key (dunning.journey); step keys never hold '@'
REASON_MAX = 200


@dataclass(frozen=True)
class StuckPayment:
    subscription_id: str
    campaign_started_at: datetime | None  # None: the provider's account (no campaign known)
    since: datetime  # when the charge started
    source: str  # retry | bad_debt | provider
    key: str = ""  # the retry's step key, or the pay-bad-debt attempt (`pay:<hash>`)


@dataclass(frozen=True)
class StuckStep:
    subscription_id: str
    campaign_started_at: datetime
    step_key: str
    since: datetime  # claimed_at


@dataclass(frozen=True)
class ParkedEvent:
    provider: str
    event_id: str
    subscription_id: str | None
    reason: str


@dataclass(frozen=True)
class Stuck:
    payments_in_flight: int
    payments: tuple[StuckPayment, ...]
    unconfirmed_steps: int
    steps: tuple[StuckStep, ...]
    parked_events: int
    parked: tuple[ParkedEvent, ...]

    @property
    def any(self) -> bool:
        return bool(self.payments_in_flight or self.unconfirmed_steps or self.parked_events)


def _counted(conn: Connection, query: Select[Any], order: tuple[Any, ...], limit: int) -> tuple[int, list[Any]]:
    """The exact count of `query`'s rows and its first `limit` rows in `order`."""
    total = conn.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = list(conn.execute(query.order_by(*order).limit(limit)).all()) if limit > 0 else []
    return int(total), rows


def _retries(conn: Connection, cutoff: datetime, limit: int) -> tuple[int, list[StuckPayment]]:
    d = step_deliveries.c
    query = select(d.subscription_id, d.campaign_started_at, d.claimed_at, d.step_key).where(
        d.state == "claimed", d.step_key.like(RETRY_KEYS), d.claimed_at < cutoff
    )
    n, rows = _counted(conn, query, (d.claimed_at, d.subscription_id, d.step_key), limit)
    return n, [StuckPayment(r[0], r[1], r[2], "retry", r[3]) for r in rows]


def _bad_debt_claims(conn: Connection, cutoff: datetime, limit: int) -> tuple[int, list[StuckPayment]]:
    e, a = dunning_events.c, aliased(dunning_events).c
    answered = exists().where(
        a.subscription_id == e.subscription_id,
        ((a.type == FAILED) & (a.campaign_started_at == e.campaign_started_at) & (a.step_key == e.step_key))
        | ((a.type == EXITED) & (a.data["attempt"].as_string() == e.step_key)),
    )
    query = select(e.subscription_id, e.campaign_started_at, e.occurred_at, e.step_key, e.id).where(
        e.type == CLAIMED, e.occurred_at < cutoff, ~answered
    )
    n, rows = _counted(conn, query, (e.occurred_at, e.id), limit)
    return n, [StuckPayment(r[0], r[1], r[2], "bad_debt", r[3]) for r in rows]


def _provider(conn: Connection, cutoff: datetime, limit: int) -> tuple[int, list[StuckPayment]]:
    f = fake_subscriptions.c
    since = func.coalesce(f.payment_started_at, f.updated_at)  # no start recorded: since it last changed
    query = select(f.subscription_id, since.label("since")).where(f.processing.is_(True), since < cutoff)
    n, rows = _counted(conn, query, (since, f.subscription_id), limit)
    return n, [StuckPayment(r[0], None, r[1], "provider") for r in rows]


def _steps(conn: Connection, cutoff: datetime, limit: int) -> tuple[int, list[StuckStep]]:
    d = step_deliveries.c
    query = select(d.subscription_id, d.campaign_started_at, d.step_key, d.claimed_at).where(
        and_(d.state == "claimed", ~d.step_key.like(RETRY_KEYS), d.claimed_at < cutoff)
    )
    n, rows = _counted(conn, query, (d.claimed_at, d.subscription_id, d.step_key), limit)
    return n, [StuckStep(*r) for r in rows]


def _parked(conn: Connection, limit: int) -> tuple[int, list[ParkedEvent]]:
    i = inbox.c
    query = select(i.provider, i.event_id, i.subscription_id, i.reason).where(i.status == "parked")
    n, rows = _counted(conn, query, (i.occurred_at, i.id), limit)
    return n, [ParkedEvent(r[0], r[1], r[2], scrub(r[3] or "", REASON_MAX)) for r in rows]


def stuck(store: Store, window: timedelta, now: datetime, limit: int = 50) -> Stuck:
    """Everything stuck at `now`: payments and steps started more than `window` ago and
    never recorded, and every parked event. One read transaction."""
    cutoff = _utc("now", now) - window
    with store.engine.execution_options(**{_READ: True}).connect() as conn, conn.begin():
        payments: list[StuckPayment] = []
        total = 0
        for part in (_retries, _bad_debt_claims, _provider):
            n, rows = part(conn, cutoff, limit)
            total, payments = total + n, payments + rows
        steps_n, steps = _steps(conn, cutoff, limit)
        parked_n, parked = _parked(conn, limit)
    payments.sort(key=lambda p: (p.since, p.subscription_id, p.key))
    return Stuck(total, tuple(payments[:limit]), steps_n, tuple(steps), parked_n, tuple(parked))


def retry_claimed_at(store: Store, subscription_id: str) -> datetime | None:
    """When the subscription's newest engine retry still without an answer was claimed:
    a charge that may be under way at the provider right now (recompute's in-flight guard)."""
    d = step_deliveries.c
    query = select(func.max(d.claimed_at)).where(
        d.subscription_id == subscription_id, d.state == "claimed", d.step_key.like(RETRY_KEYS)
    )
    with store.engine.execution_options(**{_READ: True}).connect() as conn:
        return conn.execute(query).scalar_one_or_none()
