"""The fake provider's state, in the engine's own database: scripted cards and every call.

Tables (on the store's `metadata`; created by migration 0003_fake_provider):

``fake_cards``
    One scripted outcome per subscription: ``succeed`` or ``decline:<code>`` (a Stripe
    decline code, lowercase letters, digits and ``_``, at most 64). It holds until set
    again or cleared, like a real card.
``fake_provider_calls``
    Every call the engine made: ``charge``, ``cancel`` or ``mark_unpaid``, its
    idempotency key and its result (``succeeded``, ``declined:<code>``, ``canceled``,
    ``unpaid``). ``UNIQUE(action, idempotency_key)``: a repeated call with the same key
    gets the first call's result and records nothing new, as a real provider would.

Functions take the Store's engine (`store.engine`); the `read_*` ones take a connection
inside the caller's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Index,
    String,
    Table,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dunning.store.schema import Id, inbox, metadata
from dunning.store.types import UTCDateTime

ACTIONS: Final = ("charge", "cancel", "mark_unpaid")
SUCCEED: Final = "succeed"
DEFAULT_DECLINE: Final = "generic_decline"
OUTCOME = re.compile(r"succeed|decline:[a-z0-9_]{1,64}")
CODE = re.compile(r"[a-z0-9_]{1,64}")
INBOX_LOOKBACK = 20  # payment_failed inbox rows searched for a decline code

fake_cards = Table(
    "fake_cards",
    metadata,
    Column("subscription_id", String(255), primary_key=True),
    Column("outcome", String(80), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

fake_provider_calls = Table(
    "fake_provider_calls",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("subscription_id", String(255), nullable=False),
    Column("action", String(16), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("result", String(80), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("action", "idempotency_key"),
    CheckConstraint("action IN ('charge', 'cancel', 'mark_unpaid')", name="action"),
    Index(None, "subscription_id", "at"),
)


@dataclass(frozen=True)
class FakeCall:
    id: int
    subscription_id: str
    action: str
    idempotency_key: str
    result: str
    at: datetime


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now = {now!r}: must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _text(name: str, value: Any, limit: int = 255) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise ValueError(f"{name} = {value!r}: must be a non-empty string of at most {limit} characters")
    return value


def validate_outcome(outcome: Any) -> str:
    """'succeed' or 'decline:<code>'; ValueError naming the value otherwise."""
    if not isinstance(outcome, str) or not OUTCOME.fullmatch(outcome):
        raise ValueError(
            f"outcome {outcome!r}: must be 'succeed' or 'decline:<code>', the code 1-64 lowercase "
            "letters, digits or _ (e.g. 'decline:insufficient_funds')"
        )
    return outcome


def _insert(engine_or_conn: Engine | Connection, table: Table) -> Any:
    return pg_insert(table) if engine_or_conn.dialect.name == "postgresql" else sqlite_insert(table)


# --- cards ---------------------------------------------------------------------------


def set_card(engine: Engine, subscription_id: str, outcome: str, *, now: datetime | None = None) -> None:
    """Script the outcome of every later charge of `subscription_id`."""
    _text("subscription_id", subscription_id)
    validate_outcome(outcome)
    at = _now(now)
    ins = _insert(engine, fake_cards).values(subscription_id=subscription_id, outcome=outcome, updated_at=at)
    stmt = ins.on_conflict_do_update(
        index_elements=[fake_cards.c.subscription_id], set_={"outcome": outcome, "updated_at": at}
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def clear_card(engine: Engine, subscription_id: str) -> bool:
    """Forget the scripted outcome (charges decline with the last decline again). False if none."""
    with engine.begin() as conn:
        return conn.execute(delete(fake_cards).where(fake_cards.c.subscription_id == subscription_id)).rowcount == 1


def read_card(conn: Connection, subscription_id: str) -> str | None:
    return conn.execute(
        select(fake_cards.c.outcome).where(fake_cards.c.subscription_id == subscription_id)
    ).scalar_one_or_none()


def get_card(engine: Engine, subscription_id: str) -> str | None:
    """The scripted outcome, or None when none is set."""
    with engine.connect() as conn:
        return read_card(conn, subscription_id)


# --- calls ---------------------------------------------------------------------------


def _call(row: Any) -> FakeCall:
    return FakeCall(row.id, row.subscription_id, row.action, row.idempotency_key, row.result, row.at)


def _cols() -> tuple[Any, ...]:
    c = fake_provider_calls.c
    return (c.id, c.subscription_id, c.action, c.idempotency_key, c.result, c.at)


def _first(conn: Connection, action: str, idempotency_key: str) -> FakeCall | None:
    c = fake_provider_calls.c
    row = conn.execute(select(*_cols()).where(c.action == action, c.idempotency_key == idempotency_key)).first()
    return _call(row) if row else None


def call_once(
    engine: Engine,
    subscription_id: str,
    action: str,
    idempotency_key: str,
    decide: Callable[[Connection], str],
    *,
    now: datetime | None = None,
) -> FakeCall:
    """Record one call, its result computed by `decide(conn)` in the same transaction, or
    return the call first recorded with this (action, idempotency_key) without deciding."""
    _text("subscription_id", subscription_id)
    _text("idempotency_key", idempotency_key)
    if action not in ACTIONS:
        raise ValueError(f"action = {action!r}: must be one of {', '.join(ACTIONS)}")
    at = _now(now)
    with engine.begin() as conn:
        first = _first(conn, action, idempotency_key)
        if first is not None:
            return first
        result = _text("result", decide(conn), 80)
        stmt = (
            _insert(conn, fake_provider_calls)
            .values(subscription_id=subscription_id, action=action, idempotency_key=idempotency_key,
                    result=result, at=at)  # fmt: skip
            .on_conflict_do_nothing(index_elements=["action", "idempotency_key"])
        )
        conn.execute(stmt)
        recorded = _first(conn, action, idempotency_key)  # ours, or a concurrent first call's
    assert recorded is not None
    return recorded


def record_call(
    engine: Engine,
    subscription_id: str,
    action: str,
    idempotency_key: str,
    result: str,
    *,
    now: datetime | None = None,
) -> FakeCall:
    """Record a call with a known result; a repeated key returns the first call."""
    return call_once(engine, subscription_id, action, idempotency_key, lambda _conn: result, now=now)


def calls(engine: Engine, subscription_id: str | None = None) -> list[FakeCall]:
    """Recorded calls, oldest first; all of them, or one subscription's."""
    query = select(*_cols()).order_by(fake_provider_calls.c.id)
    if subscription_id is not None:
        query = query.where(fake_provider_calls.c.subscription_id == subscription_id)
    with engine.connect() as conn:
        return [_call(row) for row in conn.execute(query).all()]


# --- the last decline ----------------------------------------------------------------


def _inbox_code(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    event = payload.get("event")
    for source in (event if isinstance(event, dict) else {}, payload):
        code = source.get("decline_code")
        if isinstance(code, str) and CODE.fullmatch(code.strip().lower()):
            return code.strip().lower()
    return None


def read_last_decline(conn: Connection, subscription_id: str) -> str | None:
    """The most recent decline code seen for `subscription_id`: its own last declined
    charge, or the last fake `payment_failed` inbox row carrying a decline code (the
    webhook stores the event under payload["event"]), whichever was recorded later."""
    c = fake_provider_calls.c
    own = conn.execute(
        select(c.result, c.at)
        .where(c.subscription_id == subscription_id, c.action == "charge", c.result.like("declined:%"))
        .order_by(c.at.desc(), c.id.desc())
        .limit(1)
    ).first()
    i = inbox.c
    rows = conn.execute(
        select(i.payload, i.received_at)
        .where(i.provider == "fake", i.subscription_id == subscription_id, i.event_type == "payment_failed")
        .order_by(i.received_at.desc(), i.id.desc())
        .limit(INBOX_LOOKBACK)
    ).all()
    from_inbox = next(((code, row.received_at) for row in rows if (code := _inbox_code(row.payload))), None)
    candidates = []
    if own is not None:
        candidates.append((own.at, 1, own.result.removeprefix("declined:")))
    if from_inbox is not None:
        candidates.append((from_inbox[1], 0, from_inbox[0]))  # a tie goes to the engine's own call
    return max(candidates)[2] if candidates else None
