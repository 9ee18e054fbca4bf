"""Pay a subscription's bad debt: the one function behind `POST /v1/subscriptions/{id}/pay-bad-debt`
and `dunning bad-debt pay`. A separate path from collection: no Temporal, no campaign.

    guards + claim      dunning.store.bad_debt.claim (one transaction; a refusal writes nothing)
                        404 unknown_subscription, 409 not_in_bad_debt, 409 campaign_running,
                        409 payment_in_flight; a repeated Idempotency-Key -> its first answer
    charge              the subscription's provider, `retry_charge` with an idempotency key
                        derived from the subscription and the Idempotency-Key
    answer              paid -> 200 (ledger bad_debt.exited, entitlement full, projection
                        active, outbound event; one transaction); declined -> 402
                        payment_declined with the decline class (ledger bad_debt.payment_failed,
                        still in bad debt); the provider refused the request -> 502
                        provider_refused (recorded); the provider unreachable -> 503
                        provider_unavailable (not recorded: the attempt stays in flight, and the
                        same key repeats the charge once the in-flight window is over)

Every answer is `{"...", "duplicate": bool}`; a refusal is `{"error", "message"}`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dunning import reasons, text
from dunning.config import Settings
from dunning.contracts import BillingEvent, EventKind
from dunning.providers.actions import PaymentProvider, ProviderError, provider_for
from dunning.scrub import scrub
from dunning.store import bad_debt
from dunning.store.store import Store


@dataclass(frozen=True)
class PayAnswer:
    status: int  # the HTTP status
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200


def provider_key(subscription_id: str, idempotency_key: str) -> str:
    """The provider charge's idempotency key: the same request always charges once."""
    digest = hashlib.sha256(f"{subscription_id}\n{idempotency_key}".encode()).hexdigest()
    return f"dunning:bad_debt:{digest}"


def _refused(status: int, error: str, message: str) -> PayAnswer:
    return PayAnswer(status, {"error": error, "message": message})


def pay_bad_debt(
    settings: Settings,
    store: Store,
    subscription_id: str,
    idempotency_key: str,
    reason: str | None = None,
    *,
    now: datetime | None = None,
    provider: PaymentProvider | None = None,
) -> PayAnswer:
    """Charge the bad debt once per (subscription, key) and answer what happened."""
    bad = text.problem(subscription_id, text.MAX_ID) if subscription_id else "must not be empty"
    if bad:
        return _refused(400, "bad_request", f"subscription id {bad}")
    bad_key = text.key_problem(idempotency_key)
    if bad_key:
        return _refused(400, "bad_request", bad_key)
    try:
        code = reasons.check(reason)
    except ValueError as err:
        return _refused(400, "unknown_reason", str(err))
    at = now or datetime.now(UTC)

    sub = store.get_subscription(subscription_id)
    if sub is None:
        return _refused(404, "unknown_subscription", f"subscription {subscription_id!r} is not known to the engine")
    try:
        claim = bad_debt.claim(store, subscription_id, idempotency_key, code, at)
    except bad_debt.Refused as err:
        return _refused(err.status, err.error, err.message)
    if claim.answer is not None:
        return PayAnswer(claim.answer.status, {**claim.answer.body, "duplicate": True})

    actions = provider or provider_for(claim.provider, settings, store)
    try:
        result = actions.retry_charge(subscription_id, None, provider_key(subscription_id, idempotency_key))
    except ProviderError as err:
        if err.retryable:  # the outcome is unknown: the attempt stays in flight, nothing recorded
            return _refused(
                503, "provider_unavailable",
                f"the {claim.provider} provider did not answer ({scrub(err.message)}); the payment counts as in flight "
                f"for {int(bad_debt.WINDOW.total_seconds() // 60)} minutes, then repeat with the same Idempotency-Key",
            )  # fmt: skip
        body = {"error": "provider_refused", "subscription_id": subscription_id,
                "message": f"the {claim.provider} provider refused the charge: {scrub(err.message)}"}  # fmt: skip
        answer = bad_debt.finish_failed(store, claim, 502, body, at)
        return PayAnswer(answer.status, {**answer.body, "duplicate": False})

    if result.status == "succeeded":
        answer = bad_debt.finish_paid(store, claim, code, result.reference, None, at, settings.day_seconds)
    else:
        declined: dict[str, Any] = {
            "error": "payment_declined", "subscription_id": subscription_id,
            "decline_class": result.decline_class, "decline_code": result.decline_code,
            "message": f"the charge was declined ({result.decline_class or 'unknown'} decline"
            f"{': ' + result.decline_code if result.decline_code else ''}); subscription {subscription_id!r} "
            "is still in bad debt",
        }  # fmt: skip
        answer = bad_debt.finish_failed(store, claim, 402, declined, at)
    return PayAnswer(answer.status, {**answer.body, "duplicate": False})


def paid_event(settings: Settings, store: Store, event: BillingEvent) -> str | None:
    """A `bad_debt_paid` event (the provider collected the debt itself): the subscription
    leaves bad debt through this path — `bad_debt.exited` (how long, amount, reason),
    entitlement restored, the outbound event — with no charge (the event says it is paid).
    Keyed by the event id, so a redelivery changes nothing. None when the subscription is
    not in bad debt (or a campaign runs, or a payment is in flight): the caller takes the
    event down the ordinary payment path."""
    if event.kind is not EventKind.bad_debt_paid or not event.subscription_id:
        return None
    try:
        claim = bad_debt.claim(store, event.subscription_id, f"event:{event.provider}:{event.event_id}",
                               "paid_out_of_band", event.occurred_at)  # fmt: skip
    except bad_debt.Refused:
        return None
    if claim.answer is None:
        bad_debt.finish_paid(store, claim, "paid_out_of_band", event.invoice_id, event.amount_due, event.occurred_at,
                             settings.day_seconds)  # fmt: skip
    return "bad_debt_exited"
