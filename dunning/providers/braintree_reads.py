"""Braintree's word on one subscription, as a `ProviderView` (reads only).

    gateway.subscription.find(id)  ->  GET /merchants/<merchant>/subscriptions/<id>

Mapping (transactions ordered newest first by `created_at`, else as listed):

    status              Active -> active, Past Due -> past_due, Canceled -> canceled,
                        Expired -> canceled, Pending -> trialing (a subscription whose
                        first billing date is ahead: not billed yet, like a trial);
                        any other status in snake case
    invoice_id          Braintree has no invoices: the latest transaction's id (or None)
    invoice_state       canceled: "open" if balance > 0, else None
                        past_due with balance > 0: "open"
                        active, or balance 0: "paid" when the latest transaction is a
                        sale in submitted_for_settlement|settling|settled|
                        settlement_confirmed and the transaction before it failed (a
                        successful retry ends the episode); else None
                        otherwise None
    amount_due          the subscription's balance in minor units: Decimal x 10^exponent
                        of the latest transaction's currency (0 for JPY-like, 3 for
                        BHD-like, else 2; `braintree._minor_units`); a credit (negative
                        balance) is 0
    failed_at           while past due: the created_at of the latest failed transaction
                        (processor_declined | gateway_rejected | failed); else None
    payment_processing  the latest transaction is authorizing | authorized |
                        submitted_for_settlement | settlement_pending | settling: the
                        money is not settled yet, so settling counts as processing
    payment_started_at  that processing transaction's created_at; else None

Braintree sends times in UTC without an offset; they are made timezone-aware (UTC).
Errors go through `braintree_actions.provider_error` (a NotFoundError is HTTP 404, not
retryable; timeouts, connection errors, 429 and 5xx are retryable).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import braintree

from dunning.providers.braintree import _minor_units
from dunning.providers.braintree_actions import PROVIDER, _s, _status, gateway_from_settings, provider_error
from dunning.reconcile import InvoiceState, ProviderView

if TYPE_CHECKING:
    from dunning.config import Settings

STATUSES = {"Active": "active", "Past Due": "past_due", "Canceled": "canceled", "Expired": "canceled",
            "Pending": "trialing"}  # fmt: skip
FAILED = frozenset({"processor_declined", "gateway_rejected", "failed"})
PAID = frozenset({"submitted_for_settlement", "settling", "settled", "settlement_confirmed"})
PROCESSING = frozenset({"authorizing", "authorized", "submitted_for_settlement", "settlement_pending", "settling"})


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _newest_first(subscription: Any) -> list[Any]:
    txns = [t for t in (getattr(subscription, "transactions", None) or []) if t is not None]
    if txns and all(isinstance(getattr(t, "created_at", None), datetime) for t in txns):
        return sorted(txns, key=lambda t: _utc(t.created_at) or datetime.min.replace(tzinfo=UTC), reverse=True)
    return txns  # Braintree lists newest first


def _balance(subscription: Any) -> Decimal:
    try:
        return Decimal(str(getattr(subscription, "balance", None) or 0))
    except InvalidOperation:
        return Decimal(0)


def _invoice_state(status: str, balance: Decimal, txns: list[Any]) -> InvoiceState | None:
    if status == "canceled":
        return "open" if balance > 0 else None
    if status == "past_due" and balance > 0:
        return "open"
    if status == "active" or balance == 0:
        latest = txns[0] if txns else None
        before = txns[1] if len(txns) > 1 else None
        if (
            _s(latest, "status") in PAID
            and _s(latest, "type") == "sale"
            and before is not None
            and _s(before, "status") in FAILED
        ):
            return "paid"
    return None


class BraintreeReads:
    name = PROVIDER

    def __init__(self, gateway: braintree.BraintreeGateway) -> None:
        self.gateway = gateway

    @classmethod
    def from_settings(cls, settings: Settings) -> BraintreeReads:
        return cls(gateway_from_settings(settings))

    def read_subscription(self, subscription_id: str) -> ProviderView:
        what = f"read subscription {subscription_id!r}"
        try:
            sub = self.gateway.subscription.find(subscription_id)
        except Exception as err:  # braintree's own errors, and requests' when unwrapped
            raise provider_error(err, what) from err
        raw = getattr(sub, "status", None)
        status = STATUSES.get(str(raw)) or _status(raw)
        txns = _newest_first(sub)
        latest = txns[0] if txns else None
        balance = _balance(sub)
        amount = _minor_units(balance, _s(latest, "currency_iso_code"))
        failed = next((t for t in txns if _s(t, "status") in FAILED), None) if status == "past_due" else None
        processing = _s(latest, "status") in PROCESSING
        return ProviderView(
            status=status,
            invoice_id=_s(latest, "id"),
            invoice_state=_invoice_state(status, balance, txns),
            amount_due=max(amount or 0, 0),
            failed_at=_utc(getattr(failed, "created_at", None)),
            payment_processing=processing,
            payment_started_at=_utc(getattr(latest, "created_at", None)) if processing else None,
        )
