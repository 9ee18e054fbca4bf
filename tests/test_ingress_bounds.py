"""Bad text and unbelievable event times are refused at the door: 400 naming the field (or
the time and the bound), nothing written, Temporal never called. Signed by each provider
as it signs, so only the engine's own bounds can refuse them. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dunning import event_time, reasons
from dunning.contracts import BillingEvent, EventKind
from dunning.providers.fake import build_fake_event, sign_fake
from starter.client import DunningClient
from starter.dispatch import receive_event
from tests.api_helpers import RecordingClient, api_client, api_settings, nothing_written, post
from tests.webhook_payloads import (
    API_TOKEN,
    FAKE_SECRET,
    braintree_request,
    fake_request,
    stripe_event,
    stripe_header,
    stripe_invoice,
    stripe_request,
)

ROOT = Path(__file__).resolve().parents[1]
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
NUL, SURROGATE = "\x00", "\ud800"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def offline(settings, store):
    """The API with a client that fails the test if Temporal is ever called."""
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    async with api_client(api_settings(settings), store, factory) as client:
        yield client
    assert recorder.calls == []


def refused(response: httpx.Response, status: int, reason: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == reason and body["message"], body
    return body["message"]


def signed_stripe(event_id: str, type_: str, obj: dict, created: datetime) -> tuple[str, bytes, dict[str, str]]:
    body = stripe_event(event_id, type_, obj, created)  # json.dumps: NUL and surrogates as \u escapes
    return "/webhooks/stripe", body, {"Stripe-Signature": stripe_header(body)}


# --- 1. malformed text ---------------------------------------------------------------------
STRIPE_BAD = [
    ("event_id", lambda: signed_stripe("evt_1" + NUL, "invoice.payment_failed", stripe_invoice("sub_1", "cus_1", "a@example.com"), now())),
    ("subscription_id", lambda: signed_stripe("evt_1", "invoice.payment_failed", stripe_invoice("sub" + NUL, "cus_1", "a@example.com"), now())),
    ("customer_email", lambda: signed_stripe("evt_1", "invoice.payment_failed", stripe_invoice("sub_1", "cus_1", "a" + SURROGATE + "@example.com"), now())),
    ("customer_name", lambda: signed_stripe("evt_1", "invoice.payment_failed", stripe_invoice("sub_1", "cus_1", "a@example.com", customer_name="Ada" + NUL), now())),
    ("customer_id", lambda: signed_stripe("evt_1", "invoice.payment_failed", stripe_invoice("sub_1", "c" * 256, "a@example.com"), now())),
    ("customer_name", lambda: signed_stripe("evt_1", "invoice.payment_failed", stripe_invoice("sub_1", "cus_1", "a@example.com", customer_name="N" * 256), now())),
    ("event_id", lambda: signed_stripe("evt_" + SURROGATE, "charge.succeeded", {"id": "ch_1", "object": "charge"}, now())),  # ignored type
    ("event_type", lambda: signed_stripe("evt_2", "charge.succeeded" + NUL, {"id": "ch_1", "object": "charge"}, now())),
]  # fmt: skip


def signed_fake(**data: str) -> tuple[str, bytes, dict[str, str]]:
    """A fake-provider event with `data` put in as given (the builder refuses bad text)."""
    event = build_fake_event("payment_failed", "sub_1", created=now(), customer_id="cus_1")
    event_id = data.pop("id", None)
    event["id"] = event_id or event["id"]
    event["data"].update(data)
    body = json.dumps(event).encode()
    return "/webhooks/fake", body, {"X-Dunning-Signature": sign_fake(body, FAKE_SECRET, int(time.time()))}


FAKE_BAD = [
    ("event_id", lambda: signed_fake(id="evt" + NUL)),
    ("id", lambda: signed_fake(id="evt" + SURROGATE)),
    ("subscription_id", lambda: signed_fake(subscription_id="sub_1" + SURROGATE)),
    ("customer_name", lambda: signed_fake(customer_name="Ada" + NUL)),
    ("decline_code", lambda: signed_fake(decline_code="x" + SURROGATE)),
    ("customer_id", lambda: signed_fake(customer_id="cus" + NUL)),
    ("customer_email", lambda: signed_fake(customer_email="a" + NUL + "@example.com")),
]  # fmt: skip
BRAINTREE_BAD = [
    ("customer_email", lambda: braintree_request("subscription_charged_unsuccessfully", "sub_1", now(), customer="cus_1", email="a" * 320 + "@x.io")),
    ("subscription_id", lambda: braintree_request("subscription_charged_unsuccessfully", "s" * 256, now(), customer="cus_1")),
    ("customer_id", lambda: braintree_request("subscription_charged_unsuccessfully", "sub_1", now(), customer="c" * 256)),
    ("bt_payload", lambda: braintree_request("subscription_charged_unsuccessfully", "sub_1", now(), customer="cus&#0;")),  # XML holds no NUL
]  # fmt: skip
CASES = [("stripe", *c) for c in STRIPE_BAD] + [("fake", *c) for c in FAKE_BAD] + [("braintree", *c) for c in BRAINTREE_BAD]


@pytest.mark.parametrize(("provider", "field", "make"), CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
async def test_signed_events_with_nul_surrogates_or_overlong_text_are_400_naming_the_field(offline, store, provider, field, make):
    message = refused(await post(offline, make()), 400, "malformed_body")
    assert field in message
    assert "@example.com" not in message and "@x.io" not in message  # the value is never echoed
    assert nothing_written(store)


async def test_the_payment_service_refuses_bad_ids_and_reasons_before_anything(offline, store):
    for sub in ("sub%00x", "s" * 256):
        message = refused(await offline.post(f"/v1/subscriptions/{sub}/payment-recovered", headers=BEARER), 400, "bad_request")
        assert "subscription id" in message
    assert "NUL" in refused(await offline.get("/v1/subscriptions/sub%00x/campaign", headers=BEARER), 400, "bad_request")
    assert "NUL" in refused(await offline.get("/v1/subscriptions/sub%00x/entitlement", headers=BEARER), 400, "bad_request")
    assert "customer id" in refused(await offline.get("/v1/customers/cus%00x/attention", headers=BEARER), 400, "bad_request")
    url = "/v1/subscriptions/sub_1/payment-recovered"
    for reason in ("paid by card", "paid" + NUL, SURROGATE, "ada@example.com"):
        body = json.dumps({"reason": reason}).encode()  # \u escapes
        message = refused(await offline.post(url, headers=BEARER, content=body), 400, "unknown_reason")
        assert all(code in message for code in reasons.REASONS) and "ada@" not in message
    assert nothing_written(store)


# --- 2. event-time bounds -------------------------------------------------------------------
async def test_events_dated_beyond_the_skew_or_the_horizon_are_400_naming_time_and_bound(offline, store):
    ahead = now() + timedelta(minutes=10)
    message = refused(await post(offline, fake_request("payment_failed", "sub_1", ahead, customer_id="cus_1")), 400, "event_time_out_of_range")
    assert ahead.isoformat() in message and "300s" in message and "future" in message
    old = now() - timedelta(days=91)
    message = refused(await post(offline, stripe_request("evt_old", "invoice.payment_failed", "sub_1", old)), 400, "event_time_out_of_range")
    assert old.isoformat() in message and "90-day horizon" in message
    year_9999 = datetime(9999, 1, 1, tzinfo=UTC)
    refused(await post(offline, braintree_request("subscription_charged_unsuccessfully", "sub_1", year_9999)), 400, "event_time_out_of_range")
    year_1 = stripe_request("evt_y1", "invoice.payment_failed", "sub_1", datetime(1970, 1, 2, tzinfo=UTC))
    refused(await post(offline, year_1), 400, "event_time_out_of_range")
    assert nothing_written(store)
    # within the bounds: accepted (and decided without Temporal)
    assert (await post(offline, stripe_request("evt_ok1", "invoice.paid", "sub_2", now() - timedelta(days=89)))).status_code == 200
    assert (await post(offline, stripe_request("evt_ok2", "invoice.paid", "sub_3", now() + timedelta(seconds=60)))).status_code == 200


async def test_the_bounds_are_the_settings(settings, store):
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    tight = api_settings(settings, event_horizon_days=1, event_max_skew_seconds=5)
    async with api_client(tight, store, factory) as client:
        message = refused(await post(client, stripe_request("e1", "invoice.paid", "sub_1", now() - timedelta(days=2))), 400, "event_time_out_of_range")
        assert "1-day horizon" in message
        message = refused(await post(client, stripe_request("e2", "invoice.paid", "sub_1", now() + timedelta(seconds=30))), 400, "event_time_out_of_range")
        assert "5s of clock skew" in message
        assert (await post(client, stripe_request("e3", "invoice.paid", "sub_1", now() - timedelta(hours=20)))).status_code == 200


async def test_a_stripe_signature_dated_in_the_future_is_a_bad_signature(offline, store):
    path, body, _ = stripe_request("evt_f", "invoice.paid", "sub_1", now())
    future = {"Stripe-Signature": stripe_header(body, timestamp=int(time.time()) + 600)}
    message = refused(await offline.post(path, content=body, headers=future), 400, "bad_signature")
    assert "in the future" in message and "300s" in message
    assert nothing_written(store)
    slight = {"Stripe-Signature": stripe_header(body, timestamp=int(time.time()) + 60)}  # clocks drift a little
    assert (await offline.post(path, content=body, headers=slight)).json()["status"] == "processed"


def test_the_bound_check_is_pure_and_exact_at_its_edges():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    check = lambda at: event_time.out_of_range(at, t, max_skew_seconds=300, horizon_days=90)  # noqa: E731
    assert check(t + timedelta(seconds=300)) is None and check(t - timedelta(days=90)) is None
    assert "in the future" in check(t + timedelta(seconds=301))
    assert "horizon" in check(t - timedelta(days=90, seconds=1))


async def test_the_in_process_path_is_not_bounded(settings, store):
    """`dunning simulate`, the CLI and DunningClient (and the time-skipping tests) take any time."""
    recorder = RecordingClient(settings)

    async def get():
        return recorder

    long_ago = BillingEvent(provider="fake", event_id="evt_2001", event_type="manual.paid", kind=EventKind.payment_succeeded,
                            occurred_at=datetime(2001, 1, 1, tzinfo=UTC), subscription_id="sub_1", customer_id="cus_1")  # fmt: skip
    received = await receive_event(store, get, long_ago, park_after=5)  # type: ignore[arg-type]
    assert (received.status, received.action) == ("processed", "none")


# --- 6. the payment service's reason is a code ----------------------------------------------
async def test_the_python_client_refuses_a_free_text_reason_listing_the_codes(settings, store):
    client = DunningClient(None, store, settings)  # type: ignore[arg-type]  # never reaches Temporal
    with pytest.raises(ValueError, match="payment_succeeded, retry_succeeded, card_updated") as err:
        await client.payment_recovered("sub_1", "paid by ada@example.com")
    assert "ada@" not in str(err.value)
    with pytest.raises(ValueError, match="subscription_id contains a NUL"):
        await client.payment_recovered("sub" + NUL, "card_updated")
    assert nothing_written(store)


def test_the_cli_refuses_a_free_text_reason_as_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}  # nothing configured: never reached
    command = [sys.executable, "-m", "starter.cli", "campaign", "recover", "sub_1", "--reason", "paid by card"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "paid_out_of_band" in result.stderr and "--reason" in result.stderr
