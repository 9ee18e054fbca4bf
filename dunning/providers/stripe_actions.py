"""Stripe behind `PaymentProvider`, over `StripeProvider` (dunning.providers.stripe).

    retry_charge         POST /v1/invoices/<invoice>/pay; without an invoice id, the
                         subscription's newest open invoice (GET /v1/invoices?subscription=
                         <id>&status=open&limit=1) is paid. A card error is a decline.
    cancel_subscription  DELETE /v1/subscriptions/<id>
    mark_unpaid          POST /v1/invoices/<invoice>/mark_uncollectible (same invoice lookup)

The idempotency key goes out as the `Idempotency-Key` header on every write.

A refusal (4xx) is checked once against the object's state before it becomes an error:
Stripe answers 404 to DELETE on a subscription that is already cancelled, and refuses to
pay a paid invoice or mark an uncollectible one again; each of those is the state the
engine asked for, so it is a success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar

import stripe

from dunning.providers.actions import ChargeResult, ProviderError, retryable_status
from dunning.providers.stripe import API_KEY_ENV, PROVIDER, StripeProvider

if TYPE_CHECKING:
    from dunning.config import Settings

T = TypeVar("T")


def provider_error(err: stripe.StripeError, what: str) -> ProviderError:
    status = err.http_status
    retryable = isinstance(err, (stripe.APIConnectionError, stripe.RateLimitError)) or retryable_status(status)
    detail = err.user_message or str(err) or type(err).__name__
    hint = f"; check {API_KEY_ENV}" if isinstance(err, (stripe.AuthenticationError, stripe.PermissionError)) else ""
    shown = f"HTTP {status}" if status else "no response"
    return ProviderError(
        f"stripe: {what} failed ({shown}, {type(err).__name__}: {detail}){hint}",
        retryable=retryable,
        provider=PROVIDER,
        status=status,
    )


class StripeCalls:
    """A Stripe client and its error mapping, shared by the actions and the reads
    (dunning.providers.stripe_reads)."""

    name = PROVIDER

    def __init__(self, api: StripeProvider) -> None:
        self.api = api

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        return cls(StripeProvider.from_settings(settings, **kwargs))

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except stripe.StripeError as err:
            raise provider_error(err, what) from err


class StripeActions(StripeCalls):

    def _refused(self, what: str, err: stripe.StripeError, state: Callable[[], str | None], wanted: str) -> str:
        """After a 400/404 refusal: `wanted` if the object is already in that state, else the error."""
        if not isinstance(err, stripe.InvalidRequestError) or err.http_status not in (400, 404):
            raise provider_error(err, what) from err
        try:
            current = state()
        except stripe.StripeError as check:
            if check.http_status is None or retryable_status(check.http_status):
                raise provider_error(check, f"{what} (checking its state after a refusal)") from check
            current = None  # e.g. 404: the object is unknown, so the first refusal stands
        if current == wanted:
            return wanted
        raise provider_error(err, what) from err

    def _invoice(self, subscription_id: str, invoice_id: str | None, what: str) -> str:
        if invoice_id:
            return invoice_id
        found = self._call(f"{what}: finding the open invoice", lambda: self.api.open_invoice(subscription_id))
        if not found:
            raise ProviderError(
                f"stripe: {what} failed: subscription {subscription_id!r} has no open invoice",
                retryable=False,
                provider=PROVIDER,
            )
        return found

    def retry_charge(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> ChargeResult:
        what = f"retry charge for subscription {subscription_id!r}"
        invoice = self._invoice(subscription_id, invoice_id, what)
        what = f"pay invoice {invoice!r} of subscription {subscription_id!r}"
        try:
            result = self.api.retry_invoice(invoice, idempotency_key=idempotency_key)
        except stripe.StripeError as err:
            self._refused(what, err, lambda: self.api.invoice_status(invoice), "paid")
            return ChargeResult("succeeded", reference=invoice)
        if result.status == "declined":
            return ChargeResult("declined", result.decline_code, result.decline_class, reference=invoice)
        return ChargeResult("succeeded", reference=invoice)

    def cancel_subscription(self, subscription_id: str, idempotency_key: str) -> str:
        what = f"cancel subscription {subscription_id!r}"
        try:
            status = self.api.cancel_subscription(subscription_id, idempotency_key=idempotency_key)
        except stripe.StripeError as err:
            return self._refused(what, err, lambda: self.api.subscription_status(subscription_id), "canceled")
        return status or "canceled"

    def mark_unpaid(self, subscription_id: str, invoice_id: str | None, idempotency_key: str) -> str:
        what = f"mark unpaid subscription {subscription_id!r}"
        invoice = self._invoice(subscription_id, invoice_id, what)
        what = f"mark invoice {invoice!r} of subscription {subscription_id!r} uncollectible"
        try:
            status = self.api.mark_uncollectible(invoice, idempotency_key=idempotency_key)
        except stripe.StripeError as err:
            return self._refused(what, err, lambda: self.api.invoice_status(invoice), "uncollectible")
        return status or "uncollectible"
