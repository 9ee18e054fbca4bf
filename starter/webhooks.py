"""One webhook request, from bytes to a dispatched campaign action.

    body > 1 MiB                 413 (Content-Length, then the bytes actually read)
    provider not configured      404 naming the setting(s) that enable it
    verify + normalize           WebhookError -> its status, {"error": reason, "message": ...}
    text                         NUL, lone surrogate, over-long id or text: 400 malformed_body
                                 naming the field
    event time                   further ahead than event_max_skew_seconds, or older than
                                 event_horizon_days: 400 event_time_out_of_range
    Ignored                      inbox row 'ignored', 200 {"status": "ignored", "reason": ...}
    BillingEvent                 inbox row (provider, event_id) once
      already dispatched/ignored 200 {"status": "duplicate"}
      parked                     200 {"status": "parked", "reason": ...}: recorded, waiting
                                 for an operator (`dunning inbox retry`); redelivering is no use
      projection                 decided and written once, in one transaction with the
                                 decision stored on the inbox row
      dispatch                   200 {"status": "processed", "action": ..., "result": ...}
      Temporal unreachable       503; the row stays 'received' for a redelivery or the sweep

A request refused before verification writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request

from dunning import event_time, text
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
# (A BillingEvent checks all of its text itself; an Ignored event is checked here.)
LIMITS = (("event_id", text.MAX_ID), ("subscription_id", text.MAX_ID), ("customer_id", text.MAX_ID), ("event_type", 128))
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


class OutOfRange(Exception):
    """A verified event dated further ahead than the clock skew allows, or older than the horizon."""


def out_of_range(message: str) -> Reply:
    return Reply(400, {"error": "event_time_out_of_range", "message": message}, "rejected", "event_time_out_of_range")


async def wall_clock() -> datetime:
    return datetime.now(UTC)


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
        return stripe.parse_stripe(
            body, request.headers.get("stripe-signature"), settings.stripe_webhook_secret,
            max_skew=settings.event_max_skew_seconds,
        )  # fmt: skip
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
    bad = text.first_problem((name, getattr(event, name, None), limit) for name, limit in LIMITS)
    if bad:
        raise WebhookError("malformed_body", bad)


def invalid_fields(err: ValidationError) -> str:
    """Which fields were refused and why, in words; never the values (they may be people)."""
    parts = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "event"
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(msg if msg.startswith(name + " ") else f"{name}: {msg}")
    return "; ".join(parts)


def check_time(event: BillingEvent, settings: Settings, now: datetime) -> None:
    why = event_time.out_of_range(
        event.occurred_at, now, max_skew_seconds=settings.event_max_skew_seconds, horizon_days=settings.event_horizon_days
    )
    if why:
        raise OutOfRange(why)


async def receive(
    provider: str,
    request: Request,
    settings: Settings,
    store: Store,
    gate: TemporalGate,
    *,
    timeout: float,
    clock: Callable[[], Awaitable[datetime]] = wall_clock,
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
        except ValidationError as err:  # verified, but a field is not fit to keep (dunning.text)
            raise WebhookError("malformed_body", f"invalid event: {invalid_fields(err)}") from None
        except Exception as err:  # an adapter bug must not become a 500 the provider retries forever
            log.warning("%s webhook could not be normalized (%s)", provider, type(err).__name__)
            raise WebhookError("malformed_body", f"event could not be normalized ({type(err).__name__})") from None
        check_bounds(parsed)
        if isinstance(parsed, BillingEvent):
            check_time(parsed, settings, await clock())
    except WebhookError as err:
        return rejected(err)
    except OutOfRange as err:
        return out_of_range(str(err))

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
        received = await receive_event(store, gate.get, event, park_after=settings.inbox_park_after, timeout=timeout)
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
    if received.status == "parked":
        return Reply(200, {"status": "parked", "reason": received.result}, "parked", "parked")
    answer = {"status": "processed", "action": received.action, "result": received.result}
    return Reply(200, answer, "processed", received.action)
