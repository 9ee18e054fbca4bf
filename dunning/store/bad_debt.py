"""Paying a bad debt: the transactions of the guarded pay-bad-debt path (starter.bad_debt).

A subscription is **in bad debt** from its newest `bad_debt.entered` ledger row (written by
an exhausted campaign's end) until a later `bad_debt.exited`. Paying it is separate from
collection: it never touches a running campaign, its claims or its retries.

One payment attempt per (subscription, Idempotency-Key), all in the ledger, keyed by the
bad debt's entry (`campaign_started_at` of `bad_debt.entered`) and `step_key` =
``pay:<sha256(key)[:32]>`` (the key itself is never stored):

    bad_debt.payment_claimed   the attempt, claimed before the provider is called; it is
                               *in flight* until it has an answer, for at most WINDOW
                               (30 minutes): an attempt older than that died mid-call and
                               the same key takes it over (the provider dedupes the charge)
    bad_debt.payment_failed    its answer when the charge was declined or refused
    bad_debt.exited            its answer when it was paid (`data["attempt"]` names it),
                               with how long the subscription stayed in bad debt

`claim` (guards + claim) and `finish_paid` / `finish_failed` are each one transaction,
serialized with every projection decision about the subscription (`lock_subscription`).
A refusal (`Refused`) writes nothing. The projection's status goes back to `active` only
through `Store.write_projection`, in the exit's transaction, with the entitlement `full`
and the outbound `bad_debt_exited` event.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from dunning.contracts import OutboundEvent
from dunning.projection import ACTIVE, PAST_DUE, Decision
from dunning.store import outbox
from dunning.store.schema import dunning_events, subscriptions
from dunning.store.store import Store, Subscription, _now, _utc

WINDOW = timedelta(minutes=30)
ENTERED, EXITED = "bad_debt.entered", "bad_debt.exited"
CLAIMED, FAILED = "bad_debt.payment_claimed", "bad_debt.payment_failed"
RESTORED = "full"  # the entitlement a paid bad debt restores


class Refused(Exception):
    """A guard said no; nothing was written. `status`/`error` are the HTTP answer's."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


@dataclass(frozen=True)
class Answer:
    """A finished attempt's answer: the HTTP status and body (without `duplicate`)."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """This call's attempt: `answer` is set when the key was answered before (a repeat);
    otherwise the attempt is claimed and the caller charges."""

    subscription_id: str
    customer_id: str
    provider: str
    attempt: str  # the ledger step_key
    entered_at: datetime  # the bad debt's campaign_started_at
    answer: Answer | None = None
    taken_over: bool = False  # an earlier call with this key died mid-charge


def attempt_key(idempotency_key: str) -> str:
    return "pay:" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class _Row:
    id: int
    type: str
    campaign_started_at: datetime
    step_key: str
    data: dict[str, Any]
    occurred_at: datetime


def _rows(conn: Connection, sub: str) -> list[_Row]:
    e = dunning_events.c
    query = (
        select(e.id, e.type, e.campaign_started_at, e.step_key, e.data, e.occurred_at)
        .where(e.subscription_id == sub, e.type.in_((ENTERED, EXITED, CLAIMED, FAILED)))
        .order_by(e.id)
    )
    return [_Row(*r) for r in conn.execute(query).all()]


def _open_entry(rows: list[_Row]) -> _Row | None:
    """The newest `bad_debt.entered` with no `bad_debt.exited` after it, else None."""
    entered = [r for r in rows if r.type == ENTERED]
    if not entered:
        return None
    last = entered[-1]
    return None if any(r.type == EXITED and r.id > last.id for r in rows) else last


def _answer(rows: list[_Row], claim: _Row) -> Answer | None:
    for r in rows:
        if r.type == FAILED and r.step_key == claim.step_key and r.campaign_started_at == claim.campaign_started_at:
            return Answer(int(r.data.get("http_status", 402)), dict(r.data.get("answer") or {}))
        if r.type == EXITED and r.data.get("attempt") == claim.step_key:
            return Answer(200, _paid_body(r.data, r.occurred_at))
    return None


def _paid_body(data: dict[str, Any], at: datetime) -> dict[str, Any]:
    keys = ("subscription_id", "how", "reason", "seconds_in_bad_debt", "days_in_bad_debt", "amount", "reference",
            "entitlement")  # fmt: skip
    return {"status": "paid", **{k: data.get(k) for k in keys}, "exited_at": _utc("exited_at", at).isoformat()}


def _guard_campaign(sub: Subscription) -> None:
    if sub.status == PAST_DUE or sub.dunning_campaign_started_at is not None:
        raise Refused(
            409, "campaign_running",
            f"subscription {sub.id!r} has a dunning campaign running: its payment goes through the campaign "
            "(payment-recovered), not pay-bad-debt",
        )  # fmt: skip


def _guard_in_flight(rows: list[_Row], sub: str, now: datetime, window: timedelta, mine: str) -> None:
    for r in rows:
        if r.type == CLAIMED and r.step_key != mine and now - r.occurred_at < window and _answer(rows, r) is None:
            until = (r.occurred_at + window).isoformat()
            raise Refused(
                409, "payment_in_flight",
                f"a payment of subscription {sub!r}'s bad debt started at {r.occurred_at.isoformat()} has no answer "
                f"yet; it counts as in flight until {until}: retry after that",
            )  # fmt: skip


def claim(
    store: Store, sub: str, idempotency_key: str, reason: str, now: datetime, window: timedelta = WINDOW
) -> Claim:
    """Check the guards and claim the attempt, in one transaction; a repeated key gets its
    first answer (`Claim.answer`). Raises Refused (nothing written)."""
    now, attempt = _utc("now", now), attempt_key(idempotency_key)
    with store.write() as conn:
        store.lock_subscription(conn, sub)
        current = store.locked_subscription(conn, sub)
        if current is None:
            raise Refused(404, "unknown_subscription", f"subscription {sub!r} is not known to the engine")
        rows = _rows(conn, sub)

        def made(entered_at: datetime, answer: Answer | None = None, taken_over: bool = False) -> Claim:
            return Claim(sub, current.customer_id, current.provider, attempt, entered_at, answer, taken_over)

        mine = next((r for r in rows if r.type == CLAIMED and r.step_key == attempt), None)
        if mine is not None:
            answer = _answer(rows, mine)
            if answer is not None:
                return made(mine.campaign_started_at, answer=answer)
            if now - mine.occurred_at < window:
                raise Refused(
                    409, "payment_in_flight",
                    f"the payment with this Idempotency-Key started at {mine.occurred_at.isoformat()} has no answer "
                    f"yet; it counts as in flight until {(mine.occurred_at + window).isoformat()}",
                )  # fmt: skip
        entry = _open_entry(rows)
        if entry is None or (mine is not None and entry.campaign_started_at != mine.campaign_started_at):
            raise Refused(
                409, "not_in_bad_debt",
                f"subscription {sub!r} is not in bad debt (no bad_debt.entered without a later bad_debt.exited)",
            )  # fmt: skip
        _guard_campaign(current)
        _guard_in_flight(rows, sub, now, window, attempt)
        if mine is not None:  # the earlier call died mid-charge: this one repeats it (same provider key)
            return made(mine.campaign_started_at, taken_over=True)
        conn.execute(
            store.ledger_insert(
                type=CLAIMED, subscription_id=sub, customer_id=current.customer_id,
                campaign_started_at=entry.campaign_started_at, step_key=attempt, data={"reason": reason},
                occurred_at=now, recorded_at=_now(),
            )  # fmt: skip
        )
    return made(entry.campaign_started_at)


def _claimed(conn: Connection, c: Claim) -> tuple[list[_Row], _Row]:
    rows = _rows(conn, c.subscription_id)
    mine = next(r for r in rows if r.type == CLAIMED and r.step_key == c.attempt)
    return rows, mine


def finish_failed(store: Store, c: Claim, status: int, body: dict[str, Any], now: datetime) -> Answer:
    """The attempt's answer without payment (declined, refused by the provider): ledger
    `bad_debt.payment_failed`; the subscription stays in bad debt. Idempotent."""
    now = _utc("now", now)
    with store.write() as conn:
        store.lock_subscription(conn, c.subscription_id)
        rows, mine = _claimed(conn, c)
        earlier = _answer(rows, mine)
        if earlier is not None:
            return earlier
        data = {"http_status": status, "answer": body}
        conn.execute(
            store.ledger_insert(
                type=FAILED, subscription_id=c.subscription_id, customer_id=c.customer_id,
                campaign_started_at=c.entered_at, step_key=c.attempt, data=data, occurred_at=now, recorded_at=_now(),
            )  # fmt: skip
        )
    return Answer(status, body)


def finish_paid(
    store: Store, c: Claim, reason: str, reference: str | None, amount: int | None, now: datetime, day_seconds: float
) -> Answer:
    """The charge went through. One transaction: ledger `bad_debt.exited` (how long it
    stayed, amount, reason, how it left), entitlement `full`, the projection back to
    `active` (unless a new campaign began meanwhile: that one owns them now), and the
    outbound `bad_debt_exited` event. Idempotent."""
    now = _utc("now", now)
    with store.write() as conn:
        store.lock_subscription(conn, c.subscription_id)
        current = store.locked_subscription(conn, c.subscription_id)
        rows, mine = _claimed(conn, c)
        earlier = _answer(rows, mine)
        if earlier is not None:
            return earlier
        entry = next(r for r in rows if r.type == ENTERED and r.campaign_started_at == c.entered_at)
        seconds = max(0.0, (now - entry.occurred_at).total_seconds())
        data = {
            "subscription_id": c.subscription_id, "how": "paid", "reason": reason,
            "seconds_in_bad_debt": round(seconds), "days_in_bad_debt": round(seconds / day_seconds, 2),
            "amount": amount, "reference": reference, "entitlement": RESTORED, "attempt": c.attempt,
            "decline_class": entry.data.get("decline_class"), "plan_id": entry.data.get("plan_id"),
        }  # fmt: skip
        exited = conn.execute(
            store.ledger_insert(
                type=EXITED, subscription_id=c.subscription_id, customer_id=c.customer_id,
                campaign_started_at=c.entered_at, step_key="", data=data, occurred_at=now, recorded_at=_now(),
            ).returning(dunning_events.c.id)  # fmt: skip
        ).first()
        if exited is None:  # only when the guards were bypassed: say so, never hide a charge
            body = {
                "error": "not_in_bad_debt", "subscription_id": c.subscription_id, "reference": reference,
                "message": f"the charge went through (reference {reference}) but subscription "
                f"{c.subscription_id!r} had already left this bad debt: refund it by hand",
            }  # fmt: skip
            conn.execute(
                store.ledger_insert(
                    type=FAILED, subscription_id=c.subscription_id, customer_id=c.customer_id,
                    campaign_started_at=c.entered_at, step_key=c.attempt, data={"http_status": 409, "answer": body},
                    occurred_at=now, recorded_at=_now(),
                )  # fmt: skip
            )
            return Answer(409, body)
        if current is not None and current.status != PAST_DUE and current.dunning_campaign_started_at is None:
            conn.execute(
                update(subscriptions)
                .where(subscriptions.c.id == c.subscription_id)
                .values(entitlement=RESTORED, updated_at=_now())
            )
            store.write_projection(conn, _back_to_active(current))
        event_data = {k: data[k] for k in ("how", "reason", "seconds_in_bad_debt", "days_in_bad_debt", "amount",
                                           "entitlement")}  # fmt: skip
        event = OutboundEvent(
            type="bad_debt_exited", subscription_id=c.subscription_id, customer_id=c.customer_id,
            campaign_started_at=c.entered_at, occurred_at=now, data=event_data,
        )  # fmt: skip
        outbox.enqueue(store, conn, event)
    return Answer(200, _paid_body(data, now))


def _back_to_active(current: Subscription) -> Decision:
    """The projection after a paid bad debt: active, no campaign, no decline; provider
    event time unchanged (a later provider event still decides by its own time)."""
    return Decision(
        action="none", subscription_id=current.id, status=ACTIVE, anchor=None, last_event_at=current.last_event_at,
        decline_class=None, customer_id=current.customer_id, provider=current.provider, reason="bad debt paid",
    )  # fmt: skip
