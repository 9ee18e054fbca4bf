"""Recompute's store writes: a plan's projection repairs and entitlement, checked and
written in ONE transaction with its `dunning.drift_detected` ledger row.

Check-and-act: the subscription row is locked and compared with what recompute observed
(status, anchor, entitlement). If anything changed since (a webhook, a campaign's end),
nothing is written and `Changed` is raised: the plan was made for a world that is gone,
and the caller reconciles again. A missing row is created only when the plan repairs its
status (the provider knows a subscription the engine never saw).

The ledger row, keyed by the recompute event (step_key `recompute:<hash>`), carries ids
and field names only:

    dunning.drift_detected  data {"source": "sweep"|"support", "drift": ["projection.status", ...],
                                  "actions": ["repair_projection", ...], "event_id": ...}
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import insert, update

from dunning.contracts import OutboundEvent
from dunning.reconcile import Plan, ProjectionView, RepairProjection, SetEntitlement
from dunning.store import outbox
from dunning.store.schema import dunning_events, subscriptions
from dunning.store.store import Store

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # the ledger's campaign key when no campaign is involved
DRIFT = "dunning.drift_detected"


class Changed(Exception):
    """The subscription changed between the observation and the write: nothing written."""


def step_key(event_id: str) -> str:
    return "recompute:" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


def _seen(view: ProjectionView | None, row: object | None) -> bool:
    if view is None or row is None:
        return view is None and row is None
    now = ProjectionView.of(row)  # type: ignore[arg-type]
    return (now.status, now.dunning_campaign_started_at, now.entitlement) == (
        view.status, view.dunning_campaign_started_at, view.entitlement)  # fmt: skip


def write_plan(
    store: Store,
    plan: Plan,
    observed: ProjectionView | None,
    *,
    customer_id: str,
    provider: str,
    campaign_started_at: datetime | None,
    event_id: str,
    source: str,
    at: datetime,
    outbound: bool = False,
) -> bool:
    """Write the plan's store actions and its ledger row. True when written, False when
    this event's row already exists (a repeat). Raises Changed (nothing written)."""
    sub = plan.subscription_id
    values: dict[str, object] = {}
    for a in plan.actions:
        if isinstance(a, SetEntitlement):
            values["entitlement"] = a.level
        elif isinstance(a, RepairProjection):
            values[a.field] = a.value
    with store.write() as conn:
        store.lock_subscription(conn, sub)
        row = store.locked_subscription(conn, sub)
        if not _seen(observed, row):
            raise Changed(f"subscription {sub!r} changed while recompute ran: nothing applied; reconcile again")
        key = step_key(event_id)
        anchor = campaign_started_at or EPOCH
        data = {"source": source, "drift": list(plan.drift), "actions": [a.kind for a in plan.actions],
                "event_id": event_id[:255]}  # fmt: skip
        first = conn.execute(
            store.ledger_insert(
                type=DRIFT, subscription_id=sub, customer_id=customer_id, campaign_started_at=anchor, step_key=key,
                data=data, occurred_at=at, recorded_at=datetime.now(UTC),
            ).returning(dunning_events.c.id)
        ).first()  # fmt: skip
        if first is None:
            return False
        if values and row is None:
            conn.execute(insert(subscriptions).values(
                id=sub, customer_id=customer_id, provider=provider, status=str(values.get("status", "active")),
                dunning_campaign_started_at=values.get("dunning_campaign_started_at"),
                entitlement=str(values.get("entitlement", "full")), updated_at=datetime.now(UTC),
            ))  # fmt: skip
        elif values:
            conn.execute(
                update(subscriptions).where(subscriptions.c.id == sub).values(**values, updated_at=datetime.now(UTC))
            )
        if outbound and "entitlement" in values:
            event = OutboundEvent(
                type="consequence_changed", subscription_id=sub, customer_id=customer_id, campaign_started_at=anchor,
                occurred_at=at, data={"entitlement": str(values["entitlement"]), "key": key, "reason": "recompute"},
            )  # fmt: skip
            outbox.enqueue(store, conn, event)
    return True
