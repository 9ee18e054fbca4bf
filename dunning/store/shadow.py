"""A shadow campaign's writes (rollout mode "shadow"): what it would have done, recorded
in the ledger as `dunning.shadow_action`, and nothing else — no email, no charge, no
entitlement change, no bad debt, no outbound event.

    record_action   one row per (campaign identity, key), only while the campaign is still
                    the subscription's (the same check every live effect makes); data
                    {action, detail, late_by?}
    finish          the end as a shadow row (key `end`, data {action: "end", outcome,
                    reason}) and `last_outcome` on the projection, so a later payment is a
                    plain recovery and a later failure run starts a new campaign; the
                    status, anchor and entitlement stay what the billing events made them
    campaigns       shadow campaigns and their rows, for `dunning rollout report`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from dunning.contracts import CampaignEnd, ShadowAction, Superseded, late_by
from dunning.store.campaign_writes import _check
from dunning.store.schema import dunning_events, subscriptions
from dunning.store.store import Store

TYPE = "dunning.shadow_action"
END_KEY = "end"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def record_action(store: Store, act: ShadowAction) -> Superseded | None:
    started = _utc(act.campaign_started_at)
    with store.write() as conn:
        stale = _check(store, conn, act.subscription_id, started)
        if stale is not None:
            return stale
        data: dict[str, Any] = {"action": act.action, "detail": act.detail[:64], **late_by(act.at, act.scheduled_at)}
        conn.execute(
            store.ledger_insert(
                type=TYPE, subscription_id=act.subscription_id, customer_id=act.customer_id,
                campaign_started_at=started, step_key=act.key, data=data, occurred_at=_utc(act.at),
                recorded_at=datetime.now(UTC),
            )  # fmt: skip
        )
    return None


def finish(store: Store, end: CampaignEnd) -> tuple[str, str]:
    """Record a shadow campaign's end; returns the (status, entitlement) left as they were."""
    started = _utc(end.campaign_started_at)
    with store.write() as conn:
        store.lock_subscription(conn, end.subscription_id)
        current = store.locked_subscription(conn, end.subscription_id)
        data = {"action": "end", "outcome": end.outcome, "reason": end.reason[:200]}
        first = conn.execute(
            store.ledger_insert(
                type=TYPE, subscription_id=end.subscription_id, customer_id=end.customer_id,
                campaign_started_at=started, step_key=END_KEY, data=data, occurred_at=_utc(end.at),
                recorded_at=datetime.now(UTC),
            ).returning(dunning_events.c.id)  # fmt: skip
        ).first()
        if current is None:
            return "active", "full"
        if first is not None and current.dunning_campaign_started_at in (None, started):
            conn.execute(
                update(subscriptions).where(subscriptions.c.id == end.subscription_id)
                .values(last_outcome=end.outcome, last_campaign_started_at=started, updated_at=datetime.now(UTC))
            )  # fmt: skip
        return current.status, current.entitlement


@dataclass
class ShadowCampaign:
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    actions: list[tuple[str, str, datetime]] = field(default_factory=list)  # (action, key, at)
    outcome: str | None = None  # None: still running
    ended_at: datetime | None = None


def campaigns(store: Store, since: datetime | None = None, limit: int = 1000) -> list[ShadowCampaign]:
    """Shadow campaigns begun since `since` (newest first, at most `limit`), with their rows."""
    e = dunning_events.c
    begun = select(e.subscription_id, e.customer_id, e.campaign_started_at, e.data).where(
        e.type == "dunning.campaign_started")
    if since is not None:
        begun = begun.where(e.campaign_started_at >= _utc(since))
    found: dict[tuple[str, datetime], ShadowCampaign] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(begun.order_by(e.campaign_started_at.desc(), e.id.desc())):
            if isinstance(row.data, dict) and row.data.get("mode") == "shadow" and len(found) < limit:
                found[(row.subscription_id, row.campaign_started_at)] = ShadowCampaign(
                    row.subscription_id, row.customer_id, row.campaign_started_at)
        if not found:
            return []
        subs = sorted({k[0] for k in found})
        rows = conn.execute(
            select(e.subscription_id, e.campaign_started_at, e.step_key, e.data, e.occurred_at)
            .where(e.type == TYPE, e.subscription_id.in_(subs)).order_by(e.occurred_at, e.id)
        )  # fmt: skip
        for r in rows:
            c = found.get((r.subscription_id, r.campaign_started_at))
            if c is None:
                continue
            if r.step_key == END_KEY:
                c.outcome, c.ended_at = r.data.get("outcome"), r.occurred_at
            else:
                c.actions.append((str(r.data.get("action")), r.step_key, r.occurred_at))
    return list(found.values())
