"""PURE: how one billing event changes a subscription's projection, and what the engine
must do about it.

`decide(current, event)` answers with the new projection values and one action:

    start    a healthy (or never seen) subscription turns past_due on payment_failed /
             payment_action_required; anchor = event.occurred_at (the provider's failure
             time), so the campaign's offsets count from when the payment failed
    update   a later failure (or a payment method update) while past_due: tell the
             running campaign; the anchor stays
    recover  payment_succeeded / bad_debt_paid while past_due: status active, anchor cleared
    resolve  invoice_voided / invoice_marked_uncollectible / subscription_canceled while
             past_due: the campaign ends resolved; the anchor is cleared
    late_payment  a payment for a subscription whose last campaign was exhausted and its
             terminal action ran (status canceled / unpaid): the campaign identity ends
             `recovered_after_cancel` so the host can reactivate; the status stays
    none     nothing to tell a campaign (the projection may still change)
    stale    the event is older than the last one applied: nothing changes, nothing happens

Status is decided by the newest status-bearing event (last writer wins on provider time):

    payment_failed, payment_action_required   past_due
    payment_succeeded, bad_debt_paid          active
    invoice_voided                            active        (the debt is gone)
    invoice_marked_uncollectible              uncollectible (written off)
    subscription_canceled                     canceled

so the final status does not depend on the order events arrive in. Two exceptions keep
that true where providers' own rules demand it:

* `canceled` is terminal at every provider: once canceled, a subscription stays canceled,
  and a cancellation is applied even when it arrives after a newer event (a campaign it
  finds running is resolved). Without this, a late cancellation would be lost.
* payment_method_updated, drift_detected, recompute_requested and types without a kind
  bear no status: they never move `last_event_at`, so they cannot make a real status
  change that arrives after them look stale.

Events with equal times are applied in arrival order (not stale). The anchor is the one
thing arrival order can change: a late earlier failure is stale, so a campaign is anchored
at the first failure the engine saw of the current past_due run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from dunning.contracts import BillingEvent, EventKind

Action = Literal["start", "update", "recover", "resolve", "late_payment", "none", "stale"]
ACTIONS: tuple[Action, ...] = ("start", "update", "recover", "resolve", "late_payment", "none", "stale")

PAST_DUE = "past_due"
CANCELED = "canceled"
ACTIVE = "active"
UNCOLLECTIBLE = "uncollectible"

FAILURES = frozenset({EventKind.payment_failed, EventKind.payment_action_required})
PAYMENTS = frozenset({EventKind.payment_succeeded, EventKind.bad_debt_paid, EventKind.payment_recovered})
UNPAID = "unpaid"
ENDINGS: dict[EventKind, str] = {
    EventKind.invoice_voided: ACTIVE,
    EventKind.invoice_marked_uncollectible: UNCOLLECTIBLE,
    EventKind.subscription_canceled: CANCELED,
}
# The status an event sets, whatever came before (canceled aside).
STATUS_OF: dict[EventKind, str] = {
    **{k: PAST_DUE for k in FAILURES},
    **{k: ACTIVE for k in PAYMENTS},
    **ENDINGS,
}


class Current(Protocol):
    """What `decide` reads of the stored projection (`dunning.store.store.Subscription`)."""

    @property
    def customer_id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def dunning_campaign_started_at(self) -> datetime | None: ...
    @property
    def decline_class(self) -> str | None: ...
    @property
    def last_event_at(self) -> datetime | None: ...
    @property
    def last_outcome(self) -> str | None: ...  # how the last ended campaign ended (written by its end)
    @property
    def last_campaign_started_at(self) -> datetime | None: ...  # that campaign's anchor


class Decision(BaseModel):
    """The projection after the event, and the action to dispatch.

    `write` says whether the stored row must change; `reason` is the words a recover or
    resolve signal carries (ids and provider type strings only)."""

    model_config = ConfigDict(frozen=True)

    action: Action
    subscription_id: str
    status: str
    anchor: datetime | None  # dunning_campaign_started_at
    last_event_at: datetime | None
    decline_class: str | None
    customer_id: str
    provider: str
    reason: str = ""
    write: bool = True
    kind: str = ""  # the event kind that decided it (a resolve says what resolved it)
    anchor_before: datetime | None = None  # the campaign a late payment belongs to


def decide(current: Current | None, event: BillingEvent) -> Decision:
    """The new projection values for `event` and what to do. Reads no clock."""
    if not event.subscription_id:
        raise ValueError(f"event {event.event_id!r} names no subscription")
    sub_id: str = event.subscription_id
    customer_id = event.customer_id or (current.customer_id if current else None) or event.subscription_id
    reason = _reason(event)
    kind_s = event.kind.value if event.kind else ""

    def keep(action: Action) -> Decision:
        if current is None:
            return Decision(
                action=action, subscription_id=sub_id, status=ACTIVE, anchor=None,
                last_event_at=None, decline_class=None, customer_id=customer_id, provider=event.provider,
                reason=reason, write=False, kind=kind_s,
            )  # fmt: skip
        return Decision(
            action=action, subscription_id=sub_id, status=current.status,
            anchor=current.dunning_campaign_started_at, last_event_at=current.last_event_at,
            decline_class=current.decline_class, customer_id=current.customer_id, provider=current.provider,
            reason=reason, write=False, kind=kind_s,
        )  # fmt: skip

    kind = event.kind
    status_before = current.status if current else None
    past_due = status_before == PAST_DUE
    last = current.last_event_at if current else None
    stale = last is not None and event.occurred_at < last

    if kind not in STATUS_OF:  # no status: payment method updated, drift, recompute, unknown
        if stale:
            return keep("stale")
        return keep("update" if past_due and kind is EventKind.payment_method_updated else "none")
    if stale and kind is not EventKind.subscription_canceled:
        return keep("stale")

    newest = event.occurred_at if last is None else max(last, event.occurred_at)

    # the payment service names no provider of its own: the subscription keeps its provider
    provider = current.provider if current is not None and kind is EventKind.payment_recovered else event.provider

    def write(action: Action, status: str, anchor: datetime | None, decline_class: str | None) -> Decision:
        return Decision(
            action=action, subscription_id=sub_id, status=status, anchor=anchor,
            last_event_at=newest, decline_class=decline_class, customer_id=customer_id,
            provider=provider, reason=reason, kind=kind_s,
        )  # fmt: skip

    if (
        kind in PAYMENTS
        and current is not None
        and current.last_outcome == "exhausted"
        and current.status in (CANCELED, UNPAID)
    ):  # paid after the terminal action: the status stays; the ended campaign records it
        late = write("late_payment", current.status, None, None)
        return late.model_copy(update={"anchor_before": current.last_campaign_started_at})
    if status_before == CANCELED:  # terminal: nothing reopens it
        return write("none", CANCELED, None, None)
    if kind in FAILURES:
        decline = event.decline_class or (current.decline_class if past_due and current else None)
        if past_due and current is not None and current.dunning_campaign_started_at is not None:
            return write("update", PAST_DUE, current.dunning_campaign_started_at, decline)
        return write("start", PAST_DUE, event.occurred_at, decline)
    if kind in PAYMENTS:
        return write("recover" if past_due else "none", ACTIVE, None, None)
    return write("resolve" if past_due else "none", ENDINGS[kind], None, None)  # type: ignore[index]


def _reason(event: BillingEvent) -> str:
    if event.note:
        return event.note[:200]
    what = event.kind.value if event.kind else "event"
    return f"{what}: {event.provider} {event.event_type[:100]} {event.event_id[:100]}"


def decide_end(
    current: Current | None, subscription_id: str, anchor: datetime, outcome: str, status: str
) -> Decision | None:
    """The projection after the campaign begun at `anchor` ended with `outcome`, leaving
    `status` (dunning.ending.end_state). None: nothing to write, because a newer billing
    event already decided the status (the anchor is no longer this campaign's)."""
    if current is None:
        return None
    after_cancel = outcome == "recovered_after_cancel" and current.dunning_campaign_started_at is None
    if not after_cancel and (current.dunning_campaign_started_at != anchor or current.status != PAST_DUE):
        return None  # a newer event decided; but a cancel that ran at the provider stays true
    return Decision(
        action="none", subscription_id=subscription_id, status=status, anchor=None, last_event_at=current.last_event_at,
        decline_class=None, customer_id=current.customer_id, provider=current.provider,
        reason=f"campaign ended {outcome}",
    )  # fmt: skip
