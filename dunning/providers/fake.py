"""The signed fake provider, for development, demos and tests.

Signature header (Stripe's scheme, own secret): ``t=<unix>,v1=<hex>`` where
``hex = HMAC_SHA256(secret, f"{t}.".encode() + body)``. Several ``v1=`` elements may be
given (any match passes). A timestamp more than `tolerance` seconds away from `now`,
in either direction, is refused as ``stale_timestamp``.

Body::

    {"id": "...", "type": "payment_failed", "created": "2025-01-31T12:00:00Z" | 1738324800,
     "data": {"subscription_id": "...", "customer_id": "...", "customer_email": "...",
              "customer_name": "...", "invoice_id": "...", "decline_code": "...",
              "decline_message": "...", "attempt_count": 1, "amount_due": 4999,
              "currency": "usd", "next_provider_retry_at": <ISO or unix>,
              "subscription_status": "past_due"}}

Unknown fields are refused (a typo is named, not ignored). `type` is one of
`FAKE_TYPES`; another type is `Ignored("unhandled_type")`, an event without
`data.subscription_id` is `Ignored("no_subscription")`. Decline codes use Stripe's
vocabulary (see `dunning.declines`). Naive times are UTC.
"""

from __future__ import annotations

import hmac
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dunning.contracts import BillingEvent, EventKind
from dunning.declines import classify
from dunning.providers.errors import Ignored, WebhookError, provider_disabled
from dunning.signing import mac, sign

PROVIDER = "fake"
SECRET_ENV = "DUNNING_FAKE_WEBHOOK_SECRET"

FAKE_TYPES: dict[str, EventKind] = {
    "payment_failed": EventKind.payment_failed,
    "payment_succeeded": EventKind.payment_succeeded,
    "payment_action_required": EventKind.payment_action_required,
    "payment_method_updated": EventKind.payment_method_updated,
    "invoice_voided": EventKind.invoice_voided,
    "invoice_marked_uncollectible": EventKind.invoice_marked_uncollectible,
    "subscription_canceled": EventKind.subscription_canceled,
    "bad_debt_paid": EventKind.bad_debt_paid,  # the provider collected a bad debt itself
}



def _id_field() -> Any:
    return Field(default=None, min_length=1, max_length=255)


class FakeData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subscription_id: str | None = _id_field()
    customer_id: str | None = _id_field()
    customer_email: str | None = Field(default=None, max_length=320)
    customer_name: str | None = Field(default=None, max_length=255)
    invoice_id: str | None = _id_field()
    decline_code: str | None = Field(default=None, max_length=64)
    decline_message: str | None = Field(default=None, max_length=500)
    attempt_count: int | None = Field(default=None, ge=0)
    amount_due: int | None = Field(default=None, ge=0)
    plan_id: str | None = _id_field()
    currency: str | None = Field(default=None, pattern=r"^[A-Za-z]{3}$")
    next_provider_retry_at: datetime | None = None
    subscription_status: str | None = Field(default=None, max_length=32)

    @field_validator("next_provider_retry_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value) if value is not None else None


class FakeEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=255)
    type: str = Field(min_length=1, max_length=64)
    created: datetime
    data: FakeData = Field(default_factory=FakeData)

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


# --- signing ------------------------------------------------------------------------


sign_fake = sign  # the signature header for `body`: ``t=<timestamp>,v1=<hex hmac-sha256>``


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                timestamp = None
        elif key == "v1":
            signatures.append(value.strip())
    if timestamp is None or not signatures:
        raise WebhookError("bad_signature", "signature header must look like t=<unix>,v1=<hex>")
    return timestamp, signatures


# --- parsing ------------------------------------------------------------------------


def parse_fake(
    body: bytes,
    signature_header: str | None,
    secret: str | None,
    *,
    now: datetime,
    tolerance: int = 300,
) -> BillingEvent | Ignored:
    """Verify a fake-provider webhook and normalize it.

    Raises WebhookError: 404 `provider_disabled` without a secret; 400
    `missing_signature`, `bad_signature`, `stale_timestamp`, `malformed_body` (the message
    names the bad field).
    """
    if not secret:
        raise provider_disabled(PROVIDER, SECRET_ENV)
    if not signature_header or not signature_header.strip():
        raise WebhookError("missing_signature", "missing signature header (t=<unix>,v1=<hex>)")
    timestamp, signatures = _parse_header(signature_header)
    expected = mac(body, secret, timestamp)
    if not any(hmac.compare_digest(expected.encode(), s.encode()) for s in signatures):
        raise WebhookError("bad_signature", "signature does not match the body for the configured secret")
    age = _as_utc(now).timestamp() - timestamp
    if tolerance and abs(age) > tolerance:
        raise WebhookError(
            "stale_timestamp",
            f"signature timestamp {timestamp} is {abs(age):.0f}s "
            f"{'old' if age > 0 else 'in the future'}; the tolerance is {tolerance}s",
        )

    try:
        raw = json.loads(body)
    except ValueError as err:
        raise WebhookError("malformed_body", f"body is not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise WebhookError("malformed_body", "body is not a JSON object")
    try:
        event = FakeEvent.model_validate(raw)
    except ValidationError as err:
        raise WebhookError("malformed_body", f"invalid fake event: {_describe(err)}") from None

    kind = FAKE_TYPES.get(event.type)
    if kind is None:
        return Ignored(PROVIDER, event.id, event.type, "unhandled_type")
    data = event.data
    if data.subscription_id is None:
        return Ignored(PROVIDER, event.id, event.type, "no_subscription")
    if kind is EventKind.payment_failed:
        decline_class = classify(PROVIDER, data.decline_code)
    elif kind is EventKind.payment_action_required:
        decline_class = "action_required"
    else:
        decline_class = None
    return BillingEvent(
        provider="fake",
        event_id=event.id,
        event_type=event.type,
        kind=kind,
        occurred_at=event.created,
        decline_class=decline_class,
        **data.model_dump(exclude={"currency"}),
        currency=data.currency.upper() if data.currency else None,
    )


def build_fake_event(kind: str, subscription_id: str, **fields: Any) -> dict[str, Any]:
    """A fake-provider event body (a JSON-ready dict) of type `kind`.

    `id` defaults to a uuid4 hex, `created` to now (UTC, ISO 8601); other fields go in
    `data`. Raises ValueError naming an unknown kind or a bad field.
    """
    if kind not in FAKE_TYPES:
        raise ValueError(f"unknown fake event type {kind!r}; known: {', '.join(FAKE_TYPES)}")
    event_id = fields.pop("id", None) or uuid.uuid4().hex
    created = fields.pop("created", None) or datetime.now(UTC)
    data = {"subscription_id": subscription_id, **{k: v for k, v in fields.items() if v is not None}}
    body = {"id": event_id, "type": kind, "created": _jsonable(created), "data": _jsonable(data)}
    try:
        FakeEvent.model_validate(body)
    except ValidationError as err:
        raise ValueError(f"invalid fake event: {_describe(err)}") from None
    return body


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return _as_utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
