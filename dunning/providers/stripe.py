"""Stripe: verify and normalize webhooks; the few API calls the engine makes.

Webhooks are verified with the stripe library (`stripe.WebhookSignature.verify_header`),
trying each configured secret in turn so a secret can be rotated without downtime. The
event is then read as plain JSON (no API calls, no expansion).

Mapping (Stripe event type -> EventKind):

    invoice.payment_failed            payment_failed (decline code/class, attempt count,
                                      next Smart Retry time)
    invoice.payment_action_required   payment_action_required (class action_required)
    invoice.paid                      payment_succeeded
    invoice.payment_succeeded         payment_succeeded
    invoice.marked_uncollectible      invoice_marked_uncollectible
    invoice.voided                    invoice_voided
    customer.subscription.updated     status active|trialing -> past_due|unpaid: payment_failed
                                      status past_due|unpaid -> active: payment_succeeded
                                      status -> canceled: subscription_canceled
                                      default_payment_method changed: payment_method_updated
                                      anything else: Ignored("no_relevant_change")
    customer.subscription.deleted     subscription_canceled

Every other type is `Ignored("unhandled_type")`; a handled type that names no
subscription (e.g. a one-off invoice) is `Ignored("no_subscription")`. `customer.updated`
and `payment_method.attached` are not handled: they name no subscription; the
subscription's own `default_payment_method` change arrives as
`customer.subscription.updated`.

The invoice's subscription is read from `invoice.parent.subscription_details.subscription`
(API versions from 2025-03-31) or `invoice.subscription` (older versions). The decline
is read from, in order: the expanded `payment_intent.last_payment_error`, the
`payment_intent` of an expanded `payments` list entry, the expanded `charge`
(`outcome.reason`, else `failure_code`), then `last_finalization_error`; an error's
`decline_code` falls back to its `code`. Currencies are upper-cased ISO codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import stripe

from dunning.config import ConfigError
from dunning.contracts import BillingEvent, DeclineClass, EventKind
from dunning.declines import classify
from dunning.providers.errors import Ignored, WebhookError, provider_disabled

if TYPE_CHECKING:
    from dunning.config import Settings

PROVIDER = "stripe"
SECRET_ENV = "DUNNING_STRIPE_WEBHOOK_SECRET"
API_KEY_ENV = "DUNNING_STRIPE_API_KEY"

Json = dict[str, Any]


# --- webhook ------------------------------------------------------------------------


def parse_stripe(
    body: bytes,
    signature_header: str | None,
    secrets: list[str],
    *,
    tolerance: int = 300,
    max_skew: float = 300,
    now: datetime | None = None,
) -> BillingEvent | Ignored:
    """Verify a Stripe webhook against any of `secrets` and normalize it.

    Raises WebhookError: 404 `provider_disabled` when no secret is configured; 400
    `missing_signature`, `bad_signature` (also: signed more than `max_skew` seconds after
    `now`, which the stripe library does not check), `stale_timestamp` (signed more than
    `tolerance` seconds before `now`; `tolerance` 0 turns the check off) or `malformed_body`.
    """
    _verify(body, signature_header, secrets, tolerance, now, max_skew)
    event = _load(body)
    handler = _HANDLERS.get(event["type"])
    if handler is None:
        return Ignored(PROVIDER, event["id"], event["type"], "unhandled_type")
    return handler(event, event["data"]["object"])


def _verify(
    body: bytes, header: str | None, secrets: list[str], tolerance: int, now: datetime | None, max_skew: float = 300
) -> None:
    secrets = [s for s in secrets if s and s.strip()]
    if not secrets:
        raise provider_disabled(PROVIDER, SECRET_ENV)
    if not header or not header.strip():
        raise WebhookError("missing_signature", "missing Stripe-Signature header")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookError("malformed_body", "body is not UTF-8 text") from None
    timestamp = _header_timestamp(header)
    for secret in secrets:
        try:
            # Signature only; the age is checked below so it gets its own reason.
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        current = (now or datetime.now(UTC)).timestamp()
        if timestamp > current + max_skew:
            raise WebhookError(
                "bad_signature",
                f"Stripe-Signature timestamp {timestamp} is {timestamp - current:.0f}s in the future; at most "
                f"{max_skew:g}s of clock skew is accepted",
            )
        if tolerance and timestamp < current - tolerance:
            raise WebhookError(
                "stale_timestamp",
                f"Stripe-Signature timestamp {timestamp} is more than {tolerance}s old",
            )
        return
    raise WebhookError(
        "bad_signature",
        f"Stripe-Signature does not match the body for any of the {len(secrets)} configured "
        f"secret(s) ({SECRET_ENV})",
    )


def _header_timestamp(header: str) -> int:
    # the first t= element, as the stripe library reads it
    stamps = [part.split("=", 1)[1] for part in header.split(",") if part.split("=", 1)[0] == "t" and "=" in part]
    try:
        return int(stamps[0])
    except (IndexError, ValueError):
        raise WebhookError(
            "bad_signature", "Stripe-Signature header has no valid t=<timestamp> element"
        ) from None


def _load(body: bytes) -> Json:
    try:
        event = json.loads(body)
    except ValueError as err:
        raise WebhookError("malformed_body", f"body is not JSON: {err}") from None
    if not isinstance(event, dict):
        raise WebhookError("malformed_body", "body is not a JSON object")
    for field, kind in (("id", str), ("type", str), ("created", int), ("data", dict)):
        if not isinstance(event.get(field), kind) or isinstance(event.get(field), bool):
            raise WebhookError("malformed_body", f"event.{field} is missing or not a {kind.__name__}")
    if not isinstance(event["data"].get("object"), dict):
        raise WebhookError("malformed_body", "event.data.object is missing or not an object")
    return event


def _id(value: Any) -> str | None:
    """A Stripe reference: an id string, or an expanded object with an `id`."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _ts(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _base(event: Json) -> Json:
    return {
        "provider": PROVIDER,
        "event_id": event["id"],
        "event_type": event["type"],
        "occurred_at": datetime.fromtimestamp(event["created"], tz=UTC),
    }


def _no_subscription(event: Json) -> Ignored:
    return Ignored(PROVIDER, event["id"], event["type"], "no_subscription")


# --- invoices -----------------------------------------------------------------------


def invoice_subscription(invoice: Json) -> str | None:
    """The invoice's subscription id, for new (parent.subscription_details) and old API versions."""
    return _id(_get(invoice, "parent", "subscription_details", "subscription")) or _id(
        invoice.get("subscription")
    )


def invoice_decline(invoice: Json) -> tuple[str | None, str | None, str | None]:
    """(decline_code, message, advice_code) of the invoice's last failed payment, if shown."""
    errors: list[Any] = [_get(invoice, "payment_intent", "last_payment_error")]
    payments = _get(invoice, "payments", "data")
    if isinstance(payments, list):
        errors += [_get(p, "payment", "payment_intent", "last_payment_error") for p in payments]
    for err in errors:
        if isinstance(err, dict) and (err.get("decline_code") or err.get("code")):
            return (
                _str(err.get("decline_code")) or _str(err.get("code")),
                _str(err.get("message")),
                _str(err.get("advice_code")),
            )
    charge = invoice.get("charge")
    if isinstance(charge, dict) and (charge.get("failure_code") or _get(charge, "outcome", "reason")):
        return (
            _str(_get(charge, "outcome", "reason")) or _str(charge.get("failure_code")),
            _str(charge.get("failure_message")),
            _str(_get(charge, "outcome", "advice_code")),
        )
    err = invoice.get("last_finalization_error")
    if isinstance(err, dict) and (err.get("decline_code") or err.get("code")):
        return (
            _str(err.get("decline_code")) or _str(err.get("code")),
            _str(err.get("message")),
            _str(err.get("advice_code")),
        )
    return None, None, None


def stripe_decline_class(code: str | None, advice_code: str | None = None) -> DeclineClass:
    found = classify(PROVIDER, code)
    if found == "unknown" and advice_code:
        return classify(PROVIDER, advice_code)
    return found


def invoice_plan(invoice: Json) -> str | None:
    """The price (or, on older API versions, plan) of the invoice's first line."""
    lines = invoice.get("lines")
    first = (lines.get("data") or [None])[0] if isinstance(lines, dict) else None
    if not isinstance(first, dict):
        return None
    pricing: Any = first.get("pricing") if isinstance(first.get("pricing"), dict) else {}
    price_details: Any = pricing.get("price_details") if isinstance(pricing.get("price_details"), dict) else {}
    return (
        _id(first.get("price"))
        or _id(first.get("plan"))
        or _str(price_details.get("price"))
    )


def _invoice_event(kind: EventKind) -> Callable[[Json, Json], BillingEvent | Ignored]:
    def handle(event: Json, invoice: Json) -> BillingEvent | Ignored:
        subscription_id = invoice_subscription(invoice)
        if subscription_id is None:
            return _no_subscription(event)
        currency = _str(invoice.get("currency"))
        fields: Json = {
            **_base(event),
            "kind": kind,
            "subscription_id": subscription_id,
            "customer_id": _id(invoice.get("customer")),
            "invoice_id": _id(invoice),
            "customer_email": _str(invoice.get("customer_email")),
            "customer_name": _str(invoice.get("customer_name")),
            "attempt_count": _int(invoice.get("attempt_count")),
            "amount_due": _int(invoice.get("amount_due")),
            "currency": currency.upper() if currency else None,
            "plan_id": invoice_plan(invoice),
        }
        if kind in (EventKind.payment_failed, EventKind.payment_action_required):
            code, message, advice = invoice_decline(invoice)
            fields.update(
                decline_code=code,
                decline_message=message,
                decline_class="action_required"
                if kind is EventKind.payment_action_required
                else stripe_decline_class(code, advice),
                next_provider_retry_at=_ts(invoice.get("next_payment_attempt")),
            )
        return BillingEvent(**fields)

    return handle


# --- subscriptions ------------------------------------------------------------------

_HEALTHY = {"active", "trialing"}
_PAST_DUE = {"past_due", "unpaid"}


def _subscription_event(event: Json, subscription: Json, kind: EventKind, **extra: Any) -> BillingEvent:
    return BillingEvent(
        **_base(event),
        kind=kind,
        subscription_id=subscription["id"],
        customer_id=_id(subscription.get("customer")),
        invoice_id=_id(subscription.get("latest_invoice")),
        subscription_status=_str(subscription.get("status")),
        **extra,
    )


def _subscription_updated(event: Json, subscription: Json) -> BillingEvent | Ignored:
    if _id(subscription) is None:
        return _no_subscription(event)
    previous = event["data"].get("previous_attributes") or {}
    status = subscription.get("status")
    if "status" in previous and previous["status"] != status:
        before = previous["status"]
        if status in _PAST_DUE and before in _HEALTHY:
            return _subscription_event(event, subscription, EventKind.payment_failed, decline_class="unknown")
        if status == "active" and before in _PAST_DUE:
            return _subscription_event(event, subscription, EventKind.payment_succeeded)
        if status == "canceled":
            return _subscription_event(event, subscription, EventKind.subscription_canceled)
    elif "default_payment_method" in previous and subscription.get("default_payment_method"):
        return _subscription_event(event, subscription, EventKind.payment_method_updated)
    return Ignored(PROVIDER, event["id"], event["type"], "no_relevant_change")


def _subscription_deleted(event: Json, subscription: Json) -> BillingEvent | Ignored:
    if _id(subscription) is None:
        return _no_subscription(event)
    return _subscription_event(event, subscription, EventKind.subscription_canceled)


_HANDLERS: dict[str, Callable[[Json, Json], BillingEvent | Ignored]] = {
    "invoice.payment_failed": _invoice_event(EventKind.payment_failed),
    "invoice.payment_action_required": _invoice_event(EventKind.payment_action_required),
    "invoice.paid": _invoice_event(EventKind.payment_succeeded),
    "invoice.payment_succeeded": _invoice_event(EventKind.payment_succeeded),
    "invoice.marked_uncollectible": _invoice_event(EventKind.invoice_marked_uncollectible),
    "invoice.voided": _invoice_event(EventKind.invoice_voided),
    "customer.subscription.updated": _subscription_updated,
    "customer.subscription.deleted": _subscription_deleted,
}
HANDLED_TYPES: frozenset[str] = frozenset(_HANDLERS)


# --- API calls ----------------------------------------------------------------------


@dataclass(frozen=True)
class RetryResult:
    """Outcome of paying an invoice now: a card decline is a result, not an error."""

    status: Literal["paid", "declined"]
    invoice_status: str | None = None
    decline_code: str | None = None
    decline_class: DeclineClass | None = None


class StripeProvider:
    """The Stripe API calls the engine makes, through `stripe.StripeClient`.

    `api_base` (setting `stripe_api_base`) replaces https://api.stripe.com, so tests can
    point the client at a local server. Each call takes an optional `idempotency_key`
    (activities pass one derived from the campaign identity).
    """

    def __init__(self, api_key: str, *, api_base: str | None = None, max_network_retries: int = 2) -> None:
        base: Any = {"api": api_base.rstrip("/")} if api_base else None
        self.client = stripe.StripeClient(
            api_key, base_addresses=base, max_network_retries=max_network_retries
        )

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> StripeProvider:
        if not settings.stripe_api_key:
            raise ConfigError(f"stripe_api_key is not set: set {API_KEY_ENV} to let the engine call Stripe")
        return cls(settings.stripe_api_key, api_base=settings.stripe_api_base, **kwargs)

    @staticmethod
    def _options(idempotency_key: str | None) -> Any:
        return {"idempotency_key": idempotency_key} if idempotency_key else None

    def cancel_subscription(self, sub_id: str, *, idempotency_key: str | None = None) -> str | None:
        """DELETE /v1/subscriptions/<id>; returns the subscription's status."""
        sub = self.client.v1.subscriptions.cancel(sub_id, options=self._options(idempotency_key))
        return getattr(sub, "status", None)

    def mark_uncollectible(self, invoice_id: str, *, idempotency_key: str | None = None) -> str | None:
        """POST /v1/invoices/<id>/mark_uncollectible; returns the invoice's status."""
        inv = self.client.v1.invoices.mark_uncollectible(invoice_id, options=self._options(idempotency_key))
        return getattr(inv, "status", None)

    def subscription_status(self, sub_id: str) -> str | None:
        """GET /v1/subscriptions/<id>; a cancelled subscription is still retrievable."""
        return getattr(self.client.v1.subscriptions.retrieve(sub_id), "status", None)

    def invoice_status(self, invoice_id: str) -> str | None:
        """GET /v1/invoices/<id>."""
        return getattr(self.client.v1.invoices.retrieve(invoice_id), "status", None)

    def open_invoice(self, sub_id: str) -> str | None:
        """GET /v1/invoices?subscription=<id>&status=open&limit=1: the newest open invoice's id."""
        page = self.client.v1.invoices.list(params={"subscription": sub_id, "status": "open", "limit": 1})
        data = getattr(page, "data", None) or []
        return getattr(data[0], "id", None) if data else None

    def retry_invoice(self, invoice_id: str, *, idempotency_key: str | None = None) -> RetryResult:
        """POST /v1/invoices/<id>/pay. A card decline returns `declined` with its class."""
        try:
            inv = self.client.v1.invoices.pay(invoice_id, options=self._options(idempotency_key))
        except stripe.CardError as err:
            error = err.error
            code = (getattr(error, "decline_code", None) if error else None) or err.code
            advice = getattr(error, "advice_code", None) if error else None
            klass = stripe_decline_class(code, advice)
            return RetryResult("declined", decline_code=code, decline_class=klass)
        return RetryResult("paid", invoice_status=getattr(inv, "status", None))
