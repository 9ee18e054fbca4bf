"""Which subscriptions the drift sweep looks at (activities.sweep): the engine's
subscriptions in dunning (past_due / unpaid, a campaign anchor, a reduced entitlement) or
changed since `since`, and the fake provider's accounts that owe or changed since (what
the provider knows and the engine may not have heard). Keyset pages by id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, union

from dunning.providers.fake_account import fake_subscriptions
from dunning.store.schema import subscriptions
from dunning.store.store import _READ, Store

DUNNING = ("past_due", "unpaid")


def candidates_query(after_id: str | None, limit: int, since: datetime) -> Select[Any]:
    s, f = subscriptions.c, fake_subscriptions.c
    engine_side = select(s.id.label("id")).where(
        or_(s.status.in_(DUNNING), s.dunning_campaign_started_at.is_not(None), s.entitlement != "full",
            s.updated_at >= since)
    )  # fmt: skip
    provider_side = select(f.subscription_id.label("id")).where(or_(f.status.in_(DUNNING), f.updated_at >= since))
    both = union(engine_side, provider_side).subquery()
    query = select(both.c.id)
    if after_id is not None:
        query = query.where(both.c.id > after_id)
    return query.order_by(both.c.id).limit(limit)


def find_candidates(store: Store, after_id: str | None, limit: int, since: datetime) -> list[str]:
    with store.engine.execution_options(**{_READ: True}).connect() as conn:
        return list(conn.execute(candidates_query(after_id, limit, since)).scalars())
