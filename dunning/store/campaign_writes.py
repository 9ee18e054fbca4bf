"""The campaign's own writes, each exactly one transaction that checks before it acts.

Every effect of a campaign (an email, a payment retry, a consequence change, the terminal
action) claims its row in the same transaction that checks "the subscription is still
past_due with this campaign's anchor", serialized with the projection's decisions
(`Store.lock_subscription`). A stale effect claims nothing and does nothing.

Facts and their one writer here: entitlement, the ledger rows of a campaign and its end
(`last_outcome`); the projection's status and anchor only through
`dunning.projection.decide_end`, applied in the campaign end's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from dunning import ending
from dunning.contracts import CampaignEnd, EntitlementChange, Superseded
from dunning.projection import decide_end
from dunning.store.schema import dunning_events, step_deliveries, subscriptions
from dunning.store.store import _DELIVERY_KEY, EffectClaim, Store, _now, _utc


def _delivery(store: Store, conn: Connection, sub: str, started: datetime, key: str) -> Any:
    d = step_deliveries.c
    return conn.execute(select(d.state, d.claimed_by).where(store.delivery(sub, started, key))).first()


def _check(store: Store, conn: Connection, sub: str, started: datetime) -> Superseded | None:
    store.lock_subscription(conn, sub)
    row = store.locked_subscription(conn, sub)
    return ending.superseded(row.status if row else None, row.dunning_campaign_started_at if row else None, started)


def claim_effect(
    store: Store, sub: str, campaign_started_at: datetime, key: str, message_id: str, token: str, at: datetime
) -> EffectClaim:
    """Check and claim in one transaction. Already 'sent' wins over a stale check (the
    effect happened; its record is the answer); otherwise a stale campaign claims nothing."""
    started = _utc("campaign_started_at", campaign_started_at)
    with store.write() as conn:
        existing = _delivery(store, conn, sub, started, key)
        if existing is not None and existing.state == "sent":
            return EffectClaim("sent", existing.claimed_by)
        stale = _check(store, conn, sub, started)
        if stale is not None:
            return EffectClaim("stale", stale=stale)
        if existing is not None:
            return EffectClaim(existing.state, existing.claimed_by)
        conn.execute(store.claim_insert(sub, started, key, message_id, token, at))
    return EffectClaim("claimed", token)


def change_entitlement(store: Store, change: EntitlementChange) -> Superseded | None:
    """Move the subscription along the ladder: check, entitlement, ledger row and the
    step's delivery row in one transaction; a repeat changes nothing. Returns why it was
    stale, or None when applied (now or before)."""
    started, at = _utc("campaign_started_at", change.campaign_started_at), _utc("at", change.at)
    with store.write() as conn:
        existing = _delivery(store, conn, change.subscription_id, started, change.key)
        if existing is not None and existing.state == "sent":
            return None
        stale = _check(store, conn, change.subscription_id, started)
        if stale is not None:
            return stale
        _set_entitlement(conn, change.subscription_id, change.level)
        conn.execute(
            store.insert(step_deliveries).values(
                subscription_id=change.subscription_id, campaign_started_at=started, step_key=change.key,
                state="sent", message_id=change.key, claimed_by="", claimed_at=at, sent_at=at,
            ).on_conflict_do_nothing(index_elements=_DELIVERY_KEY)  # fmt: skip
        )
        conn.execute(
            store.ledger_insert(
                type="dunning.consequence_changed", subscription_id=change.subscription_id,
                customer_id=change.customer_id, campaign_started_at=started, step_key=change.key,
                data={"level": change.level, "previous": change.previous}, occurred_at=at, recorded_at=_now(),
            )  # fmt: skip
        )
    return None


def finish_campaign(store: Store, end: CampaignEnd, day_seconds: float) -> tuple[str, str]:
    """The campaign's end, in one idempotent transaction keyed by its identity: the
    outcome's ledger row (and `bad_debt.entered` on exhaustion), the entitlement it leaves,
    `last_outcome`, and the projection's end (`decide_end`: only while the projection still
    holds this campaign's anchor). Returns (status, entitlement) it leaves behind."""
    started, at = _utc("campaign_started_at", end.campaign_started_at), _utc("at", end.at)
    status, level = ending.end_state(end.outcome, end.kind, end.on_exhaustion)
    with store.write() as conn:
        store.lock_subscription(conn, end.subscription_id)
        current = store.locked_subscription(conn, end.subscription_id)
        first = _ledger(store, conn, end, f"dunning.{end.outcome}", started, at, {"reason": end.reason[:200]})
        if end.outcome == "exhausted":
            days = (at - started).total_seconds() / day_seconds
            data = {"decline_class": end.decline_class, "days_in_dunning": round(days, 2), "plan_id": end.plan_id}
            _ledger(store, conn, end, "bad_debt.entered", started, at, data)
        if current is None:
            return status, level
        owner = current.dunning_campaign_started_at in (None, started)
        if first or owner:  # a newer campaign's own end is not undone by an older one's retry
            _set_entitlement(conn, end.subscription_id, level)
            conn.execute(
                update(subscriptions)
                .where(subscriptions.c.id == end.subscription_id)
                .values(last_outcome=end.outcome, last_campaign_started_at=started, updated_at=_now())
            )
        decision = decide_end(current, end.subscription_id, started, end.outcome, status)
        if decision is not None:
            store.write_projection(conn, decision)
    return status, level


def _ledger(
    store: Store, conn: Connection, end: CampaignEnd, type_: str, started: datetime, at: datetime, data: dict
) -> bool:
    stmt = store.ledger_insert(
        type=type_, subscription_id=end.subscription_id, customer_id=end.customer_id, campaign_started_at=started,
        step_key="", data=data, occurred_at=at, recorded_at=_now(),
    )  # fmt: skip
    return conn.execute(stmt.returning(dunning_events.c.id)).first() is not None


def _set_entitlement(conn: Connection, sub: str, level: str) -> None:
    conn.execute(
        update(subscriptions).where(subscriptions.c.id == sub).values(entitlement=level, updated_at=_now())
    )
