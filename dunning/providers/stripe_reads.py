"""Stripe's word on one subscription, as a `ProviderView` (reads only: GETs, no writes).

    GET /v1/subscriptions/<id>?expand[]=latest_invoice&expand[]=latest_invoice.payments
    GET /v1/payment_intents/<pi>?expand[]=latest_charge   (only for an open invoice whose
                                                           payment intent is not expanded)

stripe 16.1.0 pins API version 2026-10-28.endive, where the invoice no longer carries
`payment_intent` (moved off in 2025-03-31.basil): the payment intent is read from the
invoice's `payments` list (its newest entry's `payment.payment_intent`). Expanding it in
the first GET would be five levels deep, over Stripe's limit of four, hence the second
GET. An invoice that still carries `payment_intent` (older versions) is read as well.

Mapping:

    status              subscription.status, as Stripe says it
    invoice_id          latest_invoice.id (None: no invoice)
    invoice_state       latest_invoice.status (draft|open|paid|void|uncollectible)
    amount_due          latest_invoice.amount_remaining, else amount_due (minor units)
    failed_at           the payment intent's latest charge `created` when that charge
                        failed; else, for an open invoice with attempt_count > 0,
                        status_transitions.finalized_at; else None
    payment_processing  the payment intent's status is "processing"
    payment_started_at  the latest charge's `created` while the payment intent is
                        processing, or succeeded while the invoice is still open (the
                        money is taken, the invoice not yet marked paid); else None

The payment intent is read only for an open invoice: a draft, paid, void or
uncollectible invoice has no payment in flight or failure to report. Errors go through
`stripe_actions.provider_error` (retryable for network errors, 429 and 5xx; a 404 for an
unknown subscription is not retryable).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import stripe

from dunning.providers.stripe import Json, _get, _id, _int, _ts
from dunning.providers.stripe_actions import StripeCalls
from dunning.reconcile import ProviderView

INVOICE_STATES = frozenset({"draft", "open", "paid", "void", "uncollectible"})


def _dict(obj: Any) -> Json:
    """A StripeObject (or a plain dict) as plain nested dicts."""
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return obj if isinstance(obj, dict) else {}


def _payment_intent(invoice: Json) -> Any:
    """The invoice's payment intent: an expanded dict, an id, or None."""
    legacy = invoice.get("payment_intent")
    if legacy:
        return legacy
    payments = _get(invoice, "payments", "data")
    if not isinstance(payments, list) or not payments:
        return None
    newest = max((p for p in payments if isinstance(p, dict)), key=lambda p: _int(p.get("created")) or 0, default=None)
    return _get(newest, "payment", "payment_intent")


class StripeReads(StripeCalls):
    """Reads only: `read_subscription` (GET requests)."""

    def read_subscription(self, subscription_id: str) -> ProviderView:
        client = self.api.client
        params: Any = {"expand": ["latest_invoice", "latest_invoice.payments"]}
        sub = _dict(
            self._call(
                f"read subscription {subscription_id!r}",
                lambda: client.v1.subscriptions.retrieve(subscription_id, params=params),
            )
        )
        invoice = sub.get("latest_invoice")
        if not isinstance(invoice, dict):  # no invoice, or not expanded
            return ProviderView(status=str(sub.get("status") or "unknown"), invoice_id=_id(invoice))
        state = invoice.get("status") if invoice.get("status") in INVOICE_STATES else None
        amount = _int(invoice.get("amount_remaining"))
        amount = amount if amount is not None else _int(invoice.get("amount_due"))
        pi = self._read_payment_intent(subscription_id, invoice) if state == "open" else {}
        charge = _dict(pi.get("latest_charge"))  # {} when not expanded
        failed_at = _ts(charge.get("created")) if charge.get("status") == "failed" else None
        if failed_at is None and state == "open" and (_int(invoice.get("attempt_count")) or 0) > 0:
            failed_at = _ts(_get(invoice, "status_transitions", "finalized_at"))
        processing = pi.get("status") == "processing"
        started: datetime | None = None
        if processing or pi.get("status") == "succeeded":  # state is open here: paid, not yet marked
            started = _ts(charge.get("created"))
        return ProviderView(
            status=str(sub.get("status") or "unknown"),
            invoice_id=_id(invoice),
            invoice_state=state,
            amount_due=max(amount, 0) if amount is not None else None,
            failed_at=failed_at,
            payment_processing=processing,
            payment_started_at=started,
        )

    def _read_payment_intent(self, subscription_id: str, invoice: Json) -> Json:
        """The open invoice's payment intent with its latest charge expanded ({} if none)."""
        found = _payment_intent(invoice)
        if isinstance(found, dict) and (isinstance(found.get("latest_charge"), dict) or not found.get("latest_charge")):
            return found  # expanded already (and its charge, if it has one)
        pi_id = _id(found)
        if pi_id is None:
            return {}
        client = self.api.client
        params: Any = {"expand": ["latest_charge"]}
        return _dict(
            self._call(
                f"read payment intent {pi_id!r} of subscription {subscription_id!r}",
                lambda: client.v1.payment_intents.retrieve(pi_id, params=params),
            )
        )
