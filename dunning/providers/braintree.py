"""Braintree: verify and normalize webhook notifications.

Verified and decoded by the braintree library (`gateway.webhook_notification.parse`).

Mapping (notification kind -> EventKind):

    subscription_charged_unsuccessfully   payment_failed
    subscription_went_past_due            payment_failed
    subscription_charged_successfully     payment_succeeded
    subscription_went_active              payment_succeeded
    subscription_canceled                 subscription_canceled
    subscription_expired                  subscription_canceled

Every other kind is `Ignored("unhandled_type")`; a mapped kind without a subscription id
is `Ignored("no_subscription")`.

- `event_id`: Braintree sends none, so it is `bt_` + sha256 of `bt_payload` with its
  whitespace removed (base64 ignores whitespace, so a redelivery hashes the same).
- Decline: from the subscription's latest transaction (most recent `created_at`, else
  the first listed — Braintree lists newest first): `processor_response_code`, then
  `processor_response_type` when the code is not in `declines.BRAINTREE_DECLINES`.
  A latest transaction that succeeded contributes no decline.
- `attempt_count` = the subscription's `failure_count`; `amount_due` = the latest
  transaction's amount in minor units; `customer_id` = its `customer_details.id`.
- `invoice_id` is None: Braintree has no invoices; the engine retries by subscription.
- `subscription_status`: Braintree's status in snake case ("Past Due" -> "past_due").
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import braintree
from braintree.exceptions.invalid_challenge_error import InvalidChallengeError
from braintree.exceptions.invalid_signature_error import InvalidSignatureError

from dunning.contracts import BillingEvent, EventKind
from dunning.declines import classify
from dunning.providers.errors import Ignored, WebhookError, provider_disabled

PROVIDER = "braintree"

KINDS: dict[str, EventKind] = {
    "subscription_charged_unsuccessfully": EventKind.payment_failed,
    "subscription_went_past_due": EventKind.payment_failed,
    "subscription_charged_successfully": EventKind.payment_succeeded,
    "subscription_went_active": EventKind.payment_succeeded,
    "subscription_canceled": EventKind.subscription_canceled,
    "subscription_expired": EventKind.subscription_canceled,
}

SUCCESS_STATUSES = frozenset(
    {"authorized", "authorizing", "submitted_for_settlement", "settling", "settled",
     "settlement_pending", "settlement_confirmed"}
)  # fmt: skip
ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND",
     "VUV", "XAF", "XOF", "XPF"}
)  # fmt: skip
THREE_DECIMAL = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})


@lru_cache(maxsize=8)
def _gateway(
    merchant_id: str, public_key: str, private_key: str, environment: str
) -> braintree.BraintreeGateway:
    try:
        env = braintree.Environment.parse_environment(environment)
    except braintree.exceptions.ConfigurationError:
        known = ", ".join(sorted(braintree.Environment.All))
        raise WebhookError(
            "provider_disabled",
            f"DUNNING_BRAINTREE_ENVIRONMENT = {environment!r}: must be one of {known}",
        ) from None
    return braintree.BraintreeGateway(
        braintree.Configuration(
            environment=env, merchant_id=merchant_id, public_key=public_key, private_key=private_key
        )
    )


def payload_event_id(bt_payload: str | bytes) -> str:
    raw = bt_payload.encode("ascii", "replace") if isinstance(bt_payload, str) else bt_payload
    return "bt_" + hashlib.sha256(re.sub(rb"\s+", b"", raw)).hexdigest()


def parse_braintree(
    bt_signature: str | None,
    bt_payload: str | bytes | None,
    *,
    merchant_id: str | None,
    public_key: str | None,
    private_key: str | None,
    environment: str = "sandbox",
) -> BillingEvent | Ignored:
    """Verify a Braintree webhook (`bt_signature`, `bt_payload` form fields) and normalize it.

    Raises WebhookError: 404 `provider_disabled` naming the missing settings; 400
    `missing_signature`, `bad_signature` (InvalidSignatureError / InvalidChallengeError,
    with the library's reason) or `malformed_body`.
    """
    missing = [
        env
        for env, value in (
            ("DUNNING_BRAINTREE_MERCHANT_ID", merchant_id),
            ("DUNNING_BRAINTREE_PUBLIC_KEY", public_key),
            ("DUNNING_BRAINTREE_PRIVATE_KEY", private_key),
        )
        if not value
    ]
    if missing:
        raise provider_disabled(PROVIDER, *missing)
    if not bt_signature:
        raise WebhookError("missing_signature", "missing bt_signature field")
    if not bt_payload:
        raise WebhookError("malformed_body", "missing bt_payload field")
    assert merchant_id and public_key and private_key
    gateway = _gateway(merchant_id, public_key, private_key, environment)
    try:
        notification = gateway.webhook_notification.parse(bt_signature, bt_payload)
    except (InvalidSignatureError, InvalidChallengeError) as err:
        message = f"bt_signature is invalid ({type(err).__name__}: {err})"
        raise WebhookError("bad_signature", message) from None
    except Exception as err:  # undecodable base64 / XML after a valid signature
        message = f"bt_payload could not be decoded ({type(err).__name__})"
        raise WebhookError("malformed_body", message) from None

    event_id = payload_event_id(bt_payload)
    kind_name = getattr(notification, "kind", None)
    if not isinstance(kind_name, str):
        raise WebhookError("malformed_body", "notification has no kind")
    kind = KINDS.get(kind_name)
    if kind is None:
        return Ignored(PROVIDER, event_id, kind_name, "unhandled_type")
    subscription = getattr(notification, "subscription", None)
    subscription_id = getattr(subscription, "id", None)
    if not subscription_id:
        return Ignored(PROVIDER, event_id, kind_name, "no_subscription")

    fields: dict[str, Any] = {
        "provider": PROVIDER,
        "event_id": event_id,
        "event_type": kind_name,
        "kind": kind,
        "occurred_at": _occurred_at(notification),
        "subscription_id": str(subscription_id),
        "subscription_status": _status(getattr(subscription, "status", None)),
        "plan_id": _s(subscription, "plan_id"),
    }
    txn = _latest_transaction(subscription)
    if txn is not None:
        customer = getattr(txn, "customer_details", None)
        name = " ".join(p for p in (_s(customer, "first_name"), _s(customer, "last_name")) if p)
        currency = _s(txn, "currency_iso_code")
        fields.update(
            customer_id=_s(customer, "id"),
            customer_email=_s(customer, "email"),
            customer_name=name or None,
            amount_due=_minor_units(getattr(txn, "amount", None), currency),
            currency=currency.upper() if currency else None,
        )
    if kind is EventKind.payment_failed:
        failure_count = getattr(subscription, "failure_count", None)
        fields["attempt_count"] = int(str(failure_count)) if str(failure_count or "").isdigit() else None
        declined = txn is not None and _s(txn, "status") not in SUCCESS_STATUSES
        code = _s(txn, "processor_response_code") if declined else None
        response_type = _s(txn, "processor_response_type") if declined else None
        fields.update(
            decline_code=code,
            decline_message=_s(txn, "processor_response_text") if declined else None,
            decline_class=classify(PROVIDER, code, response_type),
        )
    return BillingEvent(**fields)


def _s(obj: Any, name: str) -> str | None:
    value = getattr(obj, name, None) if obj is not None else None
    if value is None or value == "":
        return None
    return str(value)


def _occurred_at(notification: Any) -> datetime:
    ts = getattr(notification, "timestamp", None)
    if not isinstance(ts, datetime):
        raise WebhookError("malformed_body", "notification has no timestamp")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _status(status: Any) -> str | None:
    if not isinstance(status, str) or not status.strip():
        return None
    return re.sub(r"[\s-]+", "_", status.strip().lower())


def _latest_transaction(subscription: Any) -> Any:
    txns = [t for t in (getattr(subscription, "transactions", None) or []) if t is not None]
    if not txns:
        return None
    if all(isinstance(getattr(t, "created_at", None), datetime) for t in txns):
        return max(txns, key=lambda t: t.created_at)
    return txns[0]


def _minor_units(amount: Any, currency: str | None) -> int | None:
    if amount is None:
        return None
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return None
    code = (currency or "").upper()
    exponent = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    return int((value * (10**exponent)).to_integral_value())
