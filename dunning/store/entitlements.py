"""What the host app is told: entitlement and attention per subscription and customer.

Read-only: entitlement is written by the campaign's own transactions
(dunning.store.campaign_writes); the answer for a row is `dunning.ending.answer`, so it
agrees with the campaign in every end state. No Temporal call, no side effect."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from dunning import ending
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


@dataclass(frozen=True)
class Entitlement:
    subscription_id: str
    customer_id: str
    entitlement: str
    status: str
    in_dunning: bool
    requires_attention: bool
    message: str | None
    last_outcome: str | None


def _rank(level: str) -> float:
    return SEVERITY.index(level) if level in SEVERITY else 1.5


def get_entitlement(store: Store, subscription_id: str, message: str = DEFAULT_MESSAGE) -> str | None:
    found = entitlement_of(store, subscription_id, message)
    return found.entitlement if found else None


def entitlement_of(store: Store, subscription_id: str, message: str = DEFAULT_MESSAGE) -> Entitlement | None:
    sub = store.get_subscription(subscription_id)
    if sub is None:
        return None
    a = ending.answer(sub.status, sub.entitlement, sub.last_outcome, message)
    in_dunning = sub.dunning_campaign_started_at is not None
    return Entitlement(
        sub.id, sub.customer_id, a.entitlement, sub.status, in_dunning, a.requires_attention, a.message,
        sub.last_outcome,
    )  # fmt: skip


def requires_attention(store: Store, customer_id: str, message: str = DEFAULT_MESSAGE) -> Attention | None:
    """Does this customer need attention, and what are they entitled to (the most
    restrictive level over their subscriptions)? None: the engine knows no subscription
    of this customer."""
    s = subscriptions.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(s.id, s.status, s.entitlement, s.last_outcome)
            .where(s.customer_id == customer_id)
            .order_by(s.id)
        ).all()
    if not rows:
        return None
    answers = [(r.id, ending.answer(r.status, r.entitlement, r.last_outcome, message)) for r in rows]
    flagged = tuple(sub for sub, a in answers if a.requires_attention)
    worst = min((a.entitlement for _, a in answers), key=_rank)
    shown = next((a.message for _, a in answers if a.requires_attention and a.message), None)
    return Attention(customer_id, bool(flagged), worst, shown if flagged else None, flagged)
