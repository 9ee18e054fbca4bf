"""One webhook request, from bytes to a dispatched campaign action.

    body > 1 MiB                 413 (Content-Length, then the bytes actually read)
    provider not configured      404 naming the setting(s) that enable it
    verify + normalize           WebhookError -> its status, {"error": reason, "message": ...}
    Ignored                      inbox row 'ignored', 200 {"status": "ignored", "reason": ...}
    BillingEvent                 inbox row (provider, event_id) once
      already dispatched/ignored 200 {"status": "duplicate"}
      projection                 decided and written once, in one transaction with the
                                 decision stored on the inbox row
      dispatch                   200 {"status": "processed", "action": ..., "result": ...}
      Temporal unreachable       503; the row stays 'received' for a redelivery or the sweep

A request refused before verification writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from dunning.config import Settings
from dunning.contracts import BillingEvent
from dunning.providers import braintree as bt
from dunning.providers import fake, stripe
from dunning.providers.errors import Ignored, WebhookError, body_too_large, provider_disabled
from dunning.store.store import Store
from starter.dispatch import CampaignBusy, receive_event
from starter.temporal_gate import TemporalGate, describe_unavailable, is_unavailable

log = logging.getLogger("dunning.webhooks")

MAX_BODY = 1024 * 1024
PROVIDERS = ("stripe", "braintree", "fake")
FORM = "application/x-www-form-urlencoded"
BRAINTREE_ENV = (
    ("DUNNING_BRAINTREE_MERCHANT_ID", "braintree_merchant_id"),
    ("DUNNING_BRAINTREE_PUBLIC_KEY", "braintree_public_key"),
    ("DUNNING_BRAINTREE_PRIVATE_KEY", "braintree_private_key"),
)
# Stored columns and ids: longer values are refused rather than cut (an id must match).
LIMITS = (("event_id", 255), ("subscription_id", 255), ("customer_id", 255), ("event_type", 128))
RETRY_AFTER = "30"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    outcome: str  # for the counters: processed | duplicate | ignored | rejected | unavailable | busy
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


def rejected(err: WebhookError) -> Reply:
    return Reply(err.status, {"error": err.reason, "message": err.message}, "rejected", err.reason)


def disabled(provider: str, settings: Settings) -> WebhookError | None:
    """The provider's webhook is off when its settings are absent."""
    if provider == "stripe" and not [s for s in settings.stripe_webhook_secret if s.strip()]:
        return provider_disabled("stripe", stripe.SECRET_ENV)
    if provider == "fake" and not settings.fake_webhook_secret:
        return provider_disabled("fake", fake.SECRET_ENV)
    if provider == "braintree":
        missing = [env for env, attr in BRAINTREE_ENV if not getattr(settings, attr)]
        if missing:
            return provider_disabled("braintree", *missing)
    return None


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise WebhookError("malformed_body", "Content-Length is not a number") from None
        if size > limit:
            raise body_too_large(size, limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise body_too_large(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def form_fields(body: bytes, content_type: str | None) -> dict[str, str]:
    """Braintree posts `bt_signature` and `bt_payload` form-encoded."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media != FORM:
        raise WebhookError("malformed_body", f"expected a {FORM} body with bt_signature and bt_payload fields")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as err:
        raise WebhookError("malformed_body", f"form body could not be decoded ({type(err).__name__})") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields and key in ("bt_signature", "bt_payload"):
            raise WebhookError("malformed_body", f"form field {key} is given more than once")
        fields.setdefault(key, value)
    return fields


def verify(provider: str, settings: Settings, request: Request, body: bytes) -> BillingEvent | Ignored:
    """Verify the signature and normalize, with the provider's own adapter."""
    if provider == "stripe":
        return stripe.parse_stripe(body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret)
    if provider == "fake":
        return fake.parse_fake(
            body, request.headers.get("x-dunning-signature"), settings.fake_webhook_secret, now=datetime.now(UTC)
        )
    if provider == "braintree":
        fields = form_fields(body, request.headers.get("content-type"))
        return bt.parse_braintree(
            fields.get("bt_signature"),
            fields.get("bt_payload"),
            merchant_id=settings.braintree_merchant_id,
            public_key=settings.braintree_public_key,
            private_key=settings.braintree_private_key,
            environment=settings.braintree_environment,
        )
    raise ValueError(f"unknown provider {provider!r}")  # routes are fixed; never reached


def check_bounds(event: BillingEvent | Ignored) -> None:
    for name, limit in LIMITS:
        value = getattr(event, name, None)
        if isinstance(value, str) and len(value) > limit:
            raise WebhookError("malformed_body", f"{name} is {len(value)} characters; at most {limit} are accepted")


async def receive(
    provider: str,
    request: Request,
    settings: Settings,
    store: Store,
    gate: TemporalGate,
    *,
    timeout: float,
) -> Reply:
    try:
        off = disabled(provider, settings)
        if off is not None:
            raise off
        body = await read_body(request)
        try:
            parsed = verify(provider, settings, request, body)
        except WebhookError:
            raise
        except Exception as err:  # an adapter bug must not become a 500 the provider retries forever
            log.warning("%s webhook could not be normalized", provider, exc_info=True)
            raise WebhookError("malformed_body", f"event could not be normalized ({type(err).__name__})") from None
        check_bounds(parsed)
    except WebhookError as err:
        return rejected(err)

    occurred_at = None
    if isinstance(parsed, BillingEvent) and (parsed.kind is None or not parsed.subscription_id):
        reason = "unhandled_type" if parsed.kind is None else "no_subscription"
        occurred_at = parsed.occurred_at
        parsed = Ignored(parsed.provider, parsed.event_id, parsed.event_type, reason)
    if isinstance(parsed, Ignored):
        await asyncio.to_thread(
            store.inbox_ignore, provider, parsed.event_id, parsed.event_type, parsed.reason, occurred_at=occurred_at
        )
        return Reply(200, {"status": "ignored", "reason": parsed.reason}, "ignored", parsed.reason)

    event = parsed
    try:
        received = await receive_event(store, gate.get, event, timeout=timeout)
    except CampaignBusy as err:
        answer = {"error": "campaign_busy", "message": str(err)}
        return Reply(503, answer, "busy", "campaign_busy", {"Retry-After": RETRY_AFTER})
    except Exception as err:
        if not is_unavailable(err):
            raise
        log.warning("%s event %s not dispatched: %s", provider, event.event_id, describe_unavailable(err))
        answer = {
            "error": "temporal_unavailable",
            "message": f"{describe_unavailable(err)}; the event is recorded and will be dispatched when it is back",
        }
        return Reply(503, answer, "unavailable", "temporal_unavailable", {"Retry-After": RETRY_AFTER})
    if received.status == "duplicate":
        return Reply(200, {"status": "duplicate"}, "duplicate", "dispatched")
    answer = {"status": "processed", "action": received.action, "result": received.result}
    return Reply(200, answer, "processed", received.action)
