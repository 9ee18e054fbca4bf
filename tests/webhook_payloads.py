"""Signed webhook requests as each provider sends them, for the API tests.

Stripe: an event as the 2024-06-20 API renders it, signed with Stripe's scheme
(t=<unix>,v1=HMAC_SHA256(secret, "<t>.<body>")). Braintree: the library's own
`webhook_testing.sample_notification`, re-stamped with a chosen time (the sample is
stamped "now", and a campaign's anchor is the provider's time). Fake: build_fake_event +
sign_fake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import braintree
from braintree.util.crypto import Crypto

from dunning.providers.fake import build_fake_event, sign_fake

STRIPE_SECRET = "whsec_api_tests_0123456789"
FAKE_SECRET = "fake-secret-for-api-tests"
API_TOKEN = "api-token-for-tests"
BT = {"merchant_id": "merchant_api", "public_key": "public_api", "private_key": "private_api"}
BT_GATEWAY = braintree.BraintreeGateway(
    braintree.Configuration(environment=braintree.Environment.Sandbox, **BT)
)

Request = tuple[str, bytes, dict[str, str]]  # (path, body, headers)


def stripe_header(body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def stripe_invoice(sub: str, customer: str, email: str, **over: Any) -> dict[str, Any]:
    invoice: dict[str, Any] = {
        "id": f"in_{sub}",
        "object": "invoice",
        "amount_due": 4999,
        "amount_paid": 0,
        "amount_remaining": 4999,
        "attempt_count": 1,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "currency": "usd",
        "customer": customer,
        "customer_email": email,
        "customer_name": "Ada Lovelace",
        "next_payment_attempt": None,
        "paid": False,
        "status": "open",
        "subscription": sub,
        "payment_intent": {
            "id": f"pi_{sub}",
            "object": "payment_intent",
            "status": "requires_payment_method",
            "last_payment_error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            },
        },
    }
    invoice.update(over)
    return invoice


def stripe_event(event_id: str, type_: str, obj: dict[str, Any], created: datetime) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(created.timestamp()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
    ).encode()


def stripe_request(
    event_id: str,
    type_: str,
    sub: str,
    created: datetime,
    *,
    customer: str = "cus_api",
    email: str = "ada@example.com",
    **invoice: Any,
) -> Request:
    paid = type_ in ("invoice.paid", "invoice.payment_succeeded")
    over = {"paid": True, "status": "paid", "amount_paid": 4999, "payment_intent": None} if paid else {}
    if type_ == "invoice.voided":
        over = {"status": "void"}
    body = stripe_event(event_id, type_, stripe_invoice(sub, customer, email, **{**over, **invoice}), created)
    return "/webhooks/stripe", body, {"Stripe-Signature": stripe_header(body), "Content-Type": "application/json"}


def braintree_request(kind: str, sub: str, at: datetime, *, customer: str | None = None, email: str | None = None) -> Request:
    """`sample_notification`, re-stamped at `at` (and given a customer), signed as Braintree signs."""
    sample = BT_GATEWAY.webhook_testing.sample_notification(kind, sub)
    xml = base64.b64decode(sample["bt_payload"]).decode()
    xml = re.sub(r"<timestamp type=\"datetime\">[^<]*</timestamp>",
                 f'<timestamp type="datetime">{at.strftime("%Y-%m-%dT%H:%M:%SZ")}</timestamp>', xml)  # fmt: skip
    if customer:
        person = f"<customer><id>{customer}</id><email>{email or ''}</email></customer>"
        xml = xml.replace("<status>failed</status>", f"<status>failed</status>{person}", 1)
    payload = base64.encodebytes(xml.encode()).decode()
    signature = f"{BT['public_key']}|{Crypto.sha1_hmac_hash(BT['private_key'], payload)}"
    body = urlencode({"bt_signature": signature, "bt_payload": payload}).encode()
    return "/webhooks/braintree", body, {"Content-Type": "application/x-www-form-urlencoded"}


def fake_request(type_: str, sub: str, created: datetime, *, secret: str = FAKE_SECRET, **data: Any) -> Request:
    body = json.dumps(build_fake_event(type_, sub, created=created, **data)).encode()
    return "/webhooks/fake", body, {"X-Dunning-Signature": sign_fake(body, secret, int(time.time()))}
