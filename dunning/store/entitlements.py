"""Entitlement per subscription: written only by the campaign, read by the host app.

`requires_attention` reads the store only: no Temporal call, no side effect."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update

from dunning.config import ATTENTION_MESSAGE
from dunning.store.schema import subscriptions
from dunning.store.store import Store

# most severe first; a level not listed (a custom ladder's) ranks between limited and suspended
SEVERITY = ("canceled", "suspended", "limited", "full")
DEFAULT_MESSAGE = ATTENTION_MESSAGE


@dataclass(frozen=True)
class Attention:
    customer_id: str
    requires_attention: bool
    entitlement: str
    message: str | None
    subscriptions: tuple[str, ...]  # the ones that need attention


def set_entitlement(store: Store, subscription_id: str, level: str) -> str | None:
    """Set the level; returns the previous one (None: unknown subscription, nothing written)."""
    with store.engine.begin() as conn:
        row = conn.execute(
            select(subscriptions.c.entitlement).where(subscriptions.c.id == subscription_id)
        ).first()
        if row is None:
            return None
        conn.execute(
            update(subscriptions)
            .where(subscriptions.c.id == subscription_id)
            .values(entitlement=level, updated_at=datetime.now(UTC))
        )
        return row.entitlement


def get_entitlement(store: Store, subscription_id: str) -> str | None:
    sub = store.get_subscription(subscription_id)
    return sub.entitlement if sub else None


def _rank(level: str) -> int:
    return SEVERITY.index(level) if level in SEVERITY else 1.5  # type: ignore[return-value]


def requires_attention(store: Store, customer_id: str, message: str = DEFAULT_MESSAGE) -> Attention:
    """Does this customer need attention, and what are they entitled to (the most
    restrictive level over their subscriptions)?"""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(subscriptions.c.id, subscriptions.c.status, subscriptions.c.entitlement).where(
                subscriptions.c.customer_id == customer_id
            )
        ).all()
    flagged = tuple(sorted(r.id for r in rows if r.status == "past_due" or r.entitlement not in ("full",)))
    levels = [r.entitlement for r in rows] or ["full"]
    worst = min(levels, key=_rank)
    return Attention(customer_id, bool(flagged), worst, message if flagged else None, flagged)
