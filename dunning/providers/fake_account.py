"""The fake provider's own word on a subscription: its status and latest invoice, kept in
the engine's database (table ``fake_subscriptions``, migration 0006), so recompute can read
the fake provider the way it reads Stripe or Braintree.

Who writes it, as a real provider's state changes:

    dunning simulate payment-failed / payment-succeeded   the event's effect on the account
                                                          (then the webhook, unless --no-webhook)
    dunning simulate provider SUB --invoice paid ...      any change, behind the engine's back
    the engine's own calls (fake_actions)                 a charge that succeeds pays the
                                                          invoice; cancel; mark_unpaid
                                                          marks it uncollectible

A subscription the fake provider never saw has no row: reading it is an error (the
provider does not know it), and recompute changes nothing without the provider's word.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Boolean, CheckConstraint, Column, Connection, Engine, Integer, String, Table, select

from dunning.store.schema import metadata
from dunning.store.types import UTCDateTime

STATUSES: Final = ("active", "past_due", "unpaid", "canceled", "trialing", "incomplete")
INVOICE_STATES: Final = ("draft", "open", "paid", "void", "uncollectible")

fake_subscriptions = Table(
    "fake_subscriptions",
    metadata,
    Column("subscription_id", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("invoice_id", String(255), nullable=True),
    Column("invoice_state", String(16), nullable=True),
    Column("amount_due", Integer(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("processing", Boolean(), nullable=False, default=False),
    Column("payment_started_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status"),
    CheckConstraint(
        f"invoice_state IS NULL OR invoice_state IN ({', '.join(repr(s) for s in INVOICE_STATES)})",
        name="invoice_state",
    ),
)
FIELDS: Final = ("status", "invoice_id", "invoice_state", "amount_due", "failed_at", "processing", "payment_started_at")


@dataclass(frozen=True)
class FakeAccount:
    subscription_id: str
    status: str
    invoice_id: str | None
    invoice_state: str | None
    amount_due: int | None
    failed_at: datetime | None
    processing: bool
    payment_started_at: datetime | None
    updated_at: datetime


def _check(changes: dict[str, Any]) -> None:
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"fake account fields {sorted(unknown)}: unknown (known: {', '.join(FIELDS)})")
    if "status" in changes and changes["status"] not in STATUSES:
        raise ValueError(f"status {changes['status']!r}: must be one of {', '.join(STATUSES)}")
    state = changes.get("invoice_state")
    if state is not None and state not in INVOICE_STATES:
        raise ValueError(f"invoice_state {state!r}: must be one of {', '.join(INVOICE_STATES)}")
    amount = changes.get("amount_due")
    if amount is not None and (not isinstance(amount, int) or amount < 0):
        raise ValueError(f"amount_due {amount!r}: must be a whole number of minor units, at least 0")
    for name in ("failed_at", "payment_started_at"):
        at = changes.get(name)
        if at is not None and (not isinstance(at, datetime) or at.utcoffset() is None):
            raise ValueError(f"{name} = {at!r}: must be a timezone-aware datetime")


def read(conn: Connection, subscription_id: str) -> FakeAccount | None:
    t = fake_subscriptions.c
    row = conn.execute(
        select(t.subscription_id, *(getattr(t, f) for f in FIELDS), t.updated_at).where(
            t.subscription_id == subscription_id
        )
    ).first()
    return FakeAccount(**row._mapping) if row else None


def get(engine: Engine, subscription_id: str) -> FakeAccount | None:
    with engine.connect() as conn:
        return read(conn, subscription_id)


def write(conn: Connection, subscription_id: str, at: datetime, **changes: Any) -> FakeAccount:
    """Change the account inside the caller's transaction (created as `active` with no
    invoice when the fake provider has not seen the subscription). Returns it after."""
    _check(changes)
    if not isinstance(subscription_id, str) or not subscription_id.strip() or len(subscription_id) > 255:
        raise ValueError(f"subscription_id = {subscription_id!r}: must be a non-empty string of at most 255")
    current = read(conn, subscription_id)
    t = fake_subscriptions
    if current is None:
        values = {"status": "active", "processing": False, **changes, "updated_at": at}
        conn.execute(t.insert().values(subscription_id=subscription_id, **values))
    else:
        conn.execute(t.update().where(t.c.subscription_id == subscription_id).values(**changes, updated_at=at))
    after = read(conn, subscription_id)
    assert after is not None
    return after


def update(engine: Engine, subscription_id: str, at: datetime, **changes: Any) -> FakeAccount:
    with engine.begin() as conn:
        return write(conn, subscription_id, at, **changes)


def failed(conn: Connection, subscription_id: str, at: datetime, invoice_id: str, amount_due: int | None) -> None:
    """A renewal's payment failed: past due, with that invoice open (a real provider's
    `invoice.payment_failed`). A canceled subscription stays canceled."""
    current = read(conn, subscription_id)
    status = "canceled" if current is not None and current.status == "canceled" else "past_due"
    write(conn, subscription_id, at, status=status, invoice_id=invoice_id, invoice_state="open",
          amount_due=amount_due, failed_at=at, processing=False)  # fmt: skip


def paid(conn: Connection, subscription_id: str, at: datetime) -> None:
    """The open invoice was paid (by the engine's retry, or any other path)."""
    current = read(conn, subscription_id)
    if current is None:
        return
    status = "canceled" if current.status == "canceled" else "active"
    state = "paid" if current.invoice_state in ("open", "paid", None) and current.invoice_id else current.invoice_state
    write(conn, subscription_id, at, status=status, invoice_state=state, processing=False)
