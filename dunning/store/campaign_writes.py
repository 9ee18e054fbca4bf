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

from sqlalchemy import Connection, delete, select, update

from dunning import ending
from dunning.contracts import (
    CampaignEnd,
    CampaignInput,
    EntitlementChange,
    OutboundEvent,
    SkippedActions,
    Superseded,
    late_by,
)
from dunning.projection import decide_end
from dunning.store import outbox
from dunning.store.schema import dunning_events, step_deliveries, subscriptions
from dunning.store.store import _DELIVERY_KEY, EffectClaim, Store, _now, _utc


def _delivery(store: Store, conn: Connection, sub: str, started: datetime, key: str) -> Any:
    d = step_deliveries.c
    return conn.execute(select(d.state, d.claimed_by, d.sends).where(store.delivery(sub, started, key))).first()


def _check(store: Store, conn: Connection, sub: str, started: datetime) -> Superseded | None:
    store.lock_subscription(conn, sub)
    row = store.locked_subscription(conn, sub)
    return ending.superseded(row.status if row else None, row.dunning_campaign_started_at if row else None, started)


def claim_effect(
    store: Store,
    sub: str,
    campaign_started_at: datetime,
    key: str,
    message_id: str,
    token: str,
    at: datetime,
    *,
    take_over: bool = False,
) -> EffectClaim:
    """Check and claim in one transaction. Already 'sent' wins over a stale check (the
    effect happened; its record is the answer); otherwise a stale campaign claims nothing.

    A claim held by another attempt is returned as it is, unless `take_over`: Temporal
    starts an attempt only once the previous one has failed or timed out (heartbeats make
    that seconds), so the holder is dead, and the claim passes to `token` in this same
    transaction (`taken_over`, with the holder's `sends`): its effect may or may not have
    happened, and the caller repeats it in a way the far side dedupes (same Message-ID,
    same idempotency key)."""
    started = _utc("campaign_started_at", campaign_started_at)
    with store.write() as conn:
        existing = _delivery(store, conn, sub, started, key)
        if existing is not None and existing.state == "sent":
            return EffectClaim("sent", existing.claimed_by, sends=existing.sends)
        stale = _check(store, conn, sub, started)
        if stale is not None:
            return EffectClaim("stale", stale=stale)
        if existing is not None:
            if not take_over or existing.claimed_by == token:
                return EffectClaim(existing.state, existing.claimed_by, sends=existing.sends)
            d = step_deliveries.c
            conn.execute(
                update(step_deliveries)
                .where(store.delivery(sub, started, key), d.state == "claimed", d.claimed_by == existing.claimed_by)
                .values(claimed_by=token, claimed_at=_utc("at", at))
            )
            return EffectClaim("claimed", token, sends=existing.sends, taken_over=True)
        conn.execute(store.claim_insert(sub, started, key, message_id, token, at))
    return EffectClaim("claimed", token)


def count_send(store: Store, sub: str, campaign_started_at: datetime, key: str, token: str, delta: int = 1) -> int:
    """Just before an SMTP send: count it on the claim `token` holds (`delta=-1` takes it
    back when the server certainly refused it). Returns the row's sends after the call, or
    0 when `token` no longer holds the claim (then: do not send)."""
    started = _utc("campaign_started_at", campaign_started_at)
    d = step_deliveries.c
    mine = (store.delivery(sub, started, key), d.state == "claimed", d.claimed_by == token)
    with store.write() as conn:
        if conn.execute(update(step_deliveries).where(*mine).values(sends=d.sends + delta)).rowcount != 1:
            return 0
        return int(conn.execute(select(d.sends).where(*mine)).scalar_one())


def fail_effect(
    store: Store,
    sub: str,
    customer_id: str,
    campaign_started_at: datetime,
    key: str,
    token: str,
    error: str,
    message: str,
    at: datetime,
) -> None:
    """A permanent failure, certainly without effect (no address, a template error, the
    SMTP server or the provider said no): the ledger's `dunning.action_failed` row and the
    claim `token` holds is dropped, in one transaction. `message` is already scrubbed."""
    started = _utc("campaign_started_at", campaign_started_at)
    d = step_deliveries.c
    with store.write() as conn:
        conn.execute(
            delete(step_deliveries).where(
                store.delivery(sub, started, key), d.state == "claimed", d.claimed_by == token
            )
        )
        conn.execute(
            store.ledger_insert(
                type="dunning.action_failed", subscription_id=sub, customer_id=customer_id,
                campaign_started_at=started, step_key=key, data={"error": error, "message": message[:500]},
                occurred_at=_utc("at", at), recorded_at=_now(),
            )  # fmt: skip
        )


def _begun(inp: CampaignInput, shadow: bool) -> dict[str, Any]:
    """The campaign_started row: what the recovery report splits by (ids and bounded values)."""
    data: dict[str, Any] = {"provider": inp.provider}
    extra = {"amount_due": inp.amount_due, "currency": inp.currency.lower() if inp.currency else None,
             "plan_id": inp.plan_id, "decline_class": inp.decline_class}  # fmt: skip
    data.update({k: v for k, v in extra.items() if v is not None})
    if shadow:
        data["mode"] = "shadow"
    return data


def begin_campaign(store: Store, inp: CampaignInput, at: datetime, outbound: bool, shadow: bool = False) -> None:
    """The campaign's first ledger row and its outbound event, in one transaction (a
    shadow campaign's row says so, and the host app is told nothing)."""
    started, at = _utc("campaign_started_at", inp.failed_at), _utc("at", at)
    with store.write() as conn:
        first = conn.execute(
            store.ledger_insert(
                type="dunning.campaign_started", subscription_id=inp.subscription_id, customer_id=inp.customer_id,
                campaign_started_at=started, step_key="",
                data=_begun(inp, shadow), occurred_at=at,
                recorded_at=_now(),
            ).returning(dunning_events.c.id)  # fmt: skip
        ).first()
        if first is not None and outbound and not shadow:
            _outbound(store, conn, "campaign_started", inp.subscription_id, inp.customer_id, started, at,
                      {"provider": inp.provider})  # fmt: skip


def change_entitlement(store: Store, change: EntitlementChange, outbound: bool = False) -> Superseded | None:
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
                data={"level": change.level, "previous": change.previous, **late_by(change.at, change.scheduled_at)},
                occurred_at=at, recorded_at=_now(),
            )  # fmt: skip
        )
        if outbound:
            data = {"key": change.key, "level": change.level, "previous": change.previous}
            _outbound(store, conn, "consequence_changed", change.subscription_id, change.customer_id, started, at, data)
    return None


def record_skipped(store: Store, skipped: SkippedActions) -> None:
    """One `dunning.action_skipped` row per key, with the reason, in one transaction."""
    started, at = _utc("campaign_started_at", skipped.campaign_started_at), _utc("at", skipped.at)
    with store.write() as conn:
        for key in skipped.keys:
            conn.execute(
                store.ledger_insert(
                    type="dunning.action_skipped", subscription_id=skipped.subscription_id,
                    customer_id=skipped.customer_id, campaign_started_at=started, step_key=key,
                    data={"reason": skipped.reason}, occurred_at=at, recorded_at=_now(),
                )  # fmt: skip
            )


def finish_campaign(store: Store, end: CampaignEnd, day_seconds: float, outbound: bool = False) -> tuple[str, str]:
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
        if first and outbound:
            data = {"reason": end.reason[:200], "entitlement": level}
            _outbound(store, conn, end.outcome, end.subscription_id, end.customer_id, started, at, data)
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


def _outbound(
    store: Store, conn: Connection, type_: str, sub: str, customer: str, started: datetime, at: datetime, data: dict
) -> None:
    event = OutboundEvent(
        type=type_,  # type: ignore[arg-type]
        subscription_id=sub, customer_id=customer, campaign_started_at=started, occurred_at=at, data=data,
    )  # fmt: skip
    outbox.enqueue(store, conn, event)


def _set_entitlement(conn: Connection, sub: str, level: str) -> None:
    conn.execute(
        update(subscriptions).where(subscriptions.c.id == sub).values(entitlement=level, updated_at=_now())
    )
