"""Provider adapters: Stripe, Braintree and the signed fake provider.

No network: Stripe payloads are built and signed here exactly as Stripe signs them;
Braintree notifications come from the library's own `webhook_testing`; the Stripe API
client talks to a recording HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import braintree
import pytest
import stripe
from braintree.util.crypto import Crypto

from dunning.contracts import BillingEvent, EventKind
from dunning.providers.braintree import parse_braintree
from dunning.providers.errors import Ignored, WebhookError
from dunning.providers.fake import FAKE_TYPES, build_fake_event, parse_fake, sign_fake
from dunning.providers.stripe import StripeProvider, parse_stripe

# ======================================================================================
# Stripe webhooks
# ======================================================================================

SECRET = "whsec_current_0123456789abcdef"
OLD_SECRET = "whsec_previous_fedcba9876543210"
CREATED = 1_738_324_800  # 2025-01-31T12:00:00Z
NEXT_ATTEMPT = CREATED + 3 * 86400


def stripe_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme: t=<unix>,v1=HMAC_SHA256(secret, "<t>.<payload>")."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def stripe_event(type_: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> bytes:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    event = {
        "id": "evt_1QnTestFailedInvoice",
        "object": "event",
        "api_version": "2024-06-20",
        "created": CREATED,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }
    return json.dumps(event).encode()


def stripe_invoice(**over: Any) -> dict[str, Any]:
    """An invoice as the 2024-06-20 API renders it, with the payment intent expanded."""
    invoice: dict[str, Any] = {
        "id": "in_1QnTestInvoice",
        "object": "invoice",
        "amount_due": 4999,
        "amount_paid": 0,
        "amount_remaining": 4999,
        "attempt_count": 2,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "currency": "usd",
        "customer": "cus_QnTestCustomer",
        "customer_email": "ada@example.com",
        "customer_name": "Ada Lovelace",
        "next_payment_attempt": NEXT_ATTEMPT,
        "paid": False,
        "status": "open",
        "subscription": "sub_1QnTestSubscription",
        "charge": "ch_3QnTestCharge",
        "payment_intent": {
            "id": "pi_3QnTestIntent",
            "object": "payment_intent",
            "status": "requires_payment_method",
            "last_payment_error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "advice_code": "try_again_later",
            },
        },
    }
    invoice.update(over)
    return invoice


def stripe_subscription(status: str, **over: Any) -> dict[str, Any]:
    sub = {
        "id": "sub_1QnTestSubscription",
        "object": "subscription",
        "customer": "cus_QnTestCustomer",
        "status": status,
        "latest_invoice": "in_1QnTestInvoice",
        "default_payment_method": "pm_1QnTestCard",
    }
    sub.update(over)
    return sub


def parse_signed(payload: bytes, secrets: list[str] | None = None) -> BillingEvent | Ignored:
    return parse_stripe(payload, stripe_header(payload, SECRET), secrets or [SECRET])


def test_signature_scheme_matches_the_stripe_library() -> None:
    payload = stripe_event("invoice.paid", stripe_invoice())
    ours = stripe_header(payload, SECRET, CREATED)
    theirs = stripe.WebhookSignature.generate_signature_header(payload.decode(), SECRET, CREATED)
    assert ours == theirs
    assert stripe.WebhookSignature._compute_signature(f"{CREATED}.{payload.decode()}", SECRET) in ours


def test_payment_failed_older_api_shape() -> None:
    event = parse_signed(stripe_event("invoice.payment_failed", stripe_invoice()))
    assert isinstance(event, BillingEvent)
    assert event.model_dump() == {
        "provider": "stripe",
        "event_id": "evt_1QnTestFailedInvoice",
        "event_type": "invoice.payment_failed",
        "kind": EventKind.payment_failed,
        "occurred_at": datetime(2025, 1, 31, 12, 0, tzinfo=UTC),
        "subscription_id": "sub_1QnTestSubscription",
        "customer_id": "cus_QnTestCustomer",
        "invoice_id": "in_1QnTestInvoice",
        "customer_email": "ada@example.com",
        "customer_name": "Ada Lovelace",
        "decline_code": "insufficient_funds",
        "decline_message": "Your card has insufficient funds.",
        "decline_class": "soft",
        "attempt_count": 2,
        "next_provider_retry_at": datetime(2025, 2, 3, 12, 0, tzinfo=UTC),
        "amount_due": 4999,
        "currency": "USD",
        "subscription_status": None,
        "plan_id": None,
        "note": None,
    }


def test_payment_failed_newer_api_shape_with_expanded_charge() -> None:
    """2025-03-31+: subscription under parent.subscription_details; decline on the charge."""
    invoice = stripe_invoice(
        parent={
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": "sub_NewShape"},
        },
        customer={"id": "cus_Expanded", "object": "customer"},
        charge={
            "id": "ch_3QnTestCharge",
            "object": "charge",
            "failure_code": "card_declined",
            "failure_message": "Your card has expired.",
            "outcome": {"network_status": "declined_by_network", "reason": "expired_card", "type": "issuer_declined"},
        },
        next_payment_attempt=None,
    )
    del invoice["subscription"], invoice["payment_intent"]
    event = parse_signed(stripe_event("invoice.payment_failed", invoice))
    assert isinstance(event, BillingEvent)
    assert event.subscription_id == "sub_NewShape"
    assert event.customer_id == "cus_Expanded"
    assert (event.decline_code, event.decline_class) == ("expired_card", "hard")
    assert event.decline_message == "Your card has expired."
    assert event.next_provider_retry_at is None


@pytest.mark.parametrize(
    ("error", "code", "klass"),
    [
        ({"code": "card_declined", "message": "declined"}, "card_declined", "soft"),  # falls back to code
        ({"code": "card_declined", "decline_code": "stolen_card"}, "stolen_card", "hard"),
        ({"code": "card_declined", "decline_code": "brand_new_code", "advice_code": "do_not_try_again"},
         "brand_new_code", "hard"),  # unknown decline code: the advice code decides
        ({"code": "card_declined", "decline_code": "brand_new_code"}, "brand_new_code", "unknown"),
    ],
)  # fmt: skip
def test_decline_from_last_finalization_error(error: dict[str, Any], code: str, klass: str) -> None:
    invoice = stripe_invoice(payment_intent="pi_not_expanded", last_finalization_error=error)
    event = parse_signed(stripe_event("invoice.payment_failed", invoice))
    assert isinstance(event, BillingEvent)
    assert (event.decline_code, event.decline_class) == (code, klass)


def test_payment_failed_without_any_decline_detail_is_unknown() -> None:
    event = parse_signed(stripe_event("invoice.payment_failed", stripe_invoice(payment_intent="pi_x")))
    assert isinstance(event, BillingEvent)
    assert (event.decline_code, event.decline_class) == (None, "unknown")


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        ("invoice.payment_failed", EventKind.payment_failed),
        ("invoice.paid", EventKind.payment_succeeded),
        ("invoice.payment_succeeded", EventKind.payment_succeeded),
        ("invoice.payment_action_required", EventKind.payment_action_required),
        ("invoice.marked_uncollectible", EventKind.invoice_marked_uncollectible),
        ("invoice.voided", EventKind.invoice_voided),
    ],
)
def test_invoice_types(type_: str, kind: EventKind) -> None:
    event = parse_signed(stripe_event(type_, stripe_invoice()))
    assert isinstance(event, BillingEvent)
    assert (event.kind, event.event_type) == (kind, type_)
    assert (event.subscription_id, event.invoice_id) == ("sub_1QnTestSubscription", "in_1QnTestInvoice")
    if kind is EventKind.payment_action_required:
        assert event.decline_class == "action_required"
    elif kind is not EventKind.payment_failed:
        assert event.decline_class is None and event.next_provider_retry_at is None


def test_invoice_without_subscription_is_ignored() -> None:
    invoice = stripe_invoice(subscription=None, billing_reason="manual")
    event = parse_signed(stripe_event("invoice.payment_failed", invoice))
    assert event == Ignored("stripe", "evt_1QnTestFailedInvoice", "invoice.payment_failed", "no_subscription")


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        ("active", "past_due", EventKind.payment_failed),
        ("trialing", "past_due", EventKind.payment_failed),
        ("active", "unpaid", EventKind.payment_failed),
        ("past_due", "unpaid", None),  # already dunning: nothing new
        ("incomplete", "past_due", None),
        ("past_due", "active", EventKind.payment_succeeded),
        ("unpaid", "active", EventKind.payment_succeeded),
        ("trialing", "active", None),
        ("past_due", "canceled", EventKind.subscription_canceled),
        ("active", "canceled", EventKind.subscription_canceled),
    ],
)
def test_subscription_updated_transitions(before: str, after: str, kind: EventKind | None) -> None:
    payload = stripe_event("customer.subscription.updated", stripe_subscription(after), {"status": before})
    event = parse_signed(payload)
    if kind is None:
        assert event == Ignored(
            "stripe", "evt_1QnTestFailedInvoice", "customer.subscription.updated", "no_relevant_change"
        )
    else:
        assert isinstance(event, BillingEvent)
        assert event.kind is kind
        assert event.subscription_id == "sub_1QnTestSubscription"
        assert event.customer_id == "cus_QnTestCustomer"
        assert event.subscription_status == after


def test_subscription_updated_default_payment_method() -> None:
    payload = stripe_event(
        "customer.subscription.updated", stripe_subscription("past_due"), {"default_payment_method": "pm_old"}
    )
    event = parse_signed(payload)
    assert isinstance(event, BillingEvent) and event.kind is EventKind.payment_method_updated


def test_subscription_updated_without_relevant_change() -> None:
    payload = stripe_event("customer.subscription.updated", stripe_subscription("active"), {"metadata": {}})
    event = parse_signed(payload)
    assert isinstance(event, Ignored) and event.reason == "no_relevant_change"


def test_subscription_deleted() -> None:
    event = parse_signed(stripe_event("customer.subscription.deleted", stripe_subscription("canceled")))
    assert isinstance(event, BillingEvent)
    assert (event.kind, event.subscription_status) == (EventKind.subscription_canceled, "canceled")


@pytest.mark.parametrize(
    "type_", ["charge.succeeded", "customer.created", "invoice.created", "payment_method.attached"]
)
def test_unhandled_type_is_ignored(type_: str) -> None:
    event = parse_signed(stripe_event(type_, {"id": "x_1", "object": "thing"}))
    assert event == Ignored("stripe", "evt_1QnTestFailedInvoice", type_, "unhandled_type")


def test_secret_rotation() -> None:
    payload = stripe_event("invoice.paid", stripe_invoice())
    signed_old = stripe_header(payload, OLD_SECRET)
    assert isinstance(parse_stripe(payload, signed_old, [SECRET, OLD_SECRET]), BillingEvent)
    # during a roll Stripe sends one v1 per active secret
    both = f"{stripe_header(payload, 'whsec_unknown')},v1={stripe_header(payload, SECRET).split('v1=')[1]}"
    assert isinstance(parse_stripe(payload, both, [SECRET]), BillingEvent)
    with pytest.raises(WebhookError) as err:
        parse_stripe(payload, signed_old, [SECRET])
    assert err.value.reason == "bad_signature"


def _stripe_error(payload: bytes, header: str | None, secrets: list[str] | None = None) -> WebhookError:
    with pytest.raises(WebhookError) as err:
        parse_stripe(payload, header, [SECRET] if secrets is None else secrets)
    return err.value


def test_stripe_refusals() -> None:
    payload = stripe_event("invoice.payment_failed", stripe_invoice())
    header = stripe_header(payload, SECRET)
    tampered = payload.replace(b"4999", b"0001")

    cases = {
        "tampered body": (_stripe_error(tampered, header), "bad_signature"),
        "wrong secret": (_stripe_error(payload, stripe_header(payload, "whsec_wrong")), "bad_signature"),
        "missing header": (_stripe_error(payload, None), "missing_signature"),
        "empty header": (_stripe_error(payload, ""), "missing_signature"),
        "garbage header": (_stripe_error(payload, "nonsense"), "bad_signature"),
        "no v1": (_stripe_error(payload, f"t={int(time.time())},v0=abc"), "bad_signature"),
        "old timestamp": (
            _stripe_error(payload, stripe_header(payload, SECRET, int(time.time()) - 301)),
            "stale_timestamp",
        ),
        # an old timestamp with a bad signature says nothing about the age
        "old and wrong": (
            _stripe_error(payload, stripe_header(payload, "whsec_wrong", int(time.time()) - 301)),
            "bad_signature",
        ),
    }
    for name, (error, reason) in cases.items():
        assert (name, error.status, error.reason) == (name, 400, reason)
    assert "Stripe-Signature" in str(cases["missing header"][0])


def test_stripe_tolerance_and_injected_now() -> None:
    payload = stripe_event("invoice.paid", stripe_invoice())
    header = stripe_header(payload, SECRET, CREATED)
    at = datetime.fromtimestamp(CREATED, tz=UTC)
    assert isinstance(parse_stripe(payload, header, [SECRET], now=at + timedelta(seconds=299)), BillingEvent)
    with pytest.raises(WebhookError) as err:
        parse_stripe(payload, header, [SECRET], now=at + timedelta(seconds=301))
    assert err.value.reason == "stale_timestamp"
    assert isinstance(parse_stripe(payload, header, [SECRET], tolerance=0), BillingEvent)


def test_stripe_malformed_body_and_disabled() -> None:
    for body in (b"not json {", b"[1, 2]", b'{"id": "evt_1", "type": "invoice.paid"}', "é".encode("latin-1")):
        error = _stripe_error(body, stripe_header(body, SECRET))
        assert (error.status, error.reason) == (400, "malformed_body"), body
    no_created = b'{"id": "evt_1", "type": "x"}'
    assert "event.created" in str(_stripe_error(no_created, stripe_header(no_created, SECRET)))

    payload = stripe_event("invoice.paid", stripe_invoice())
    error = _stripe_error(payload, stripe_header(payload, SECRET), secrets=[])
    assert (error.status, error.reason) == (404, "provider_disabled")
    assert "DUNNING_STRIPE_WEBHOOK_SECRET" in str(error)


# ======================================================================================
# Stripe API client against a local recording server
# ======================================================================================


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        status, reply = 404, {"error": {"type": "invalid_request_error", "message": "no route"}}
        if self.command == "DELETE" and (m := re.fullmatch(r"/v1/subscriptions/(\w+)", self.path)):
            status, reply = 200, {"id": m[1], "object": "subscription", "status": "canceled"}
        elif self.command == "POST" and (m := re.fullmatch(r"/v1/invoices/(\w+)/mark_uncollectible", self.path)):
            status, reply = 200, {"id": m[1], "object": "invoice", "status": "uncollectible"}
        elif self.command == "POST" and self.path == "/v1/invoices/in_declined/pay":
            status, reply = 402, {
                "error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "message": "Your card has insufficient funds.",
                }
            }
        elif self.command == "POST" and (m := re.fullmatch(r"/v1/invoices/(\w+)/pay", self.path)):
            status, reply = 200, {"id": m[1], "object": "invoice", "status": "paid"}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def stripe_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    finally:
        server.shutdown()
        server.server_close()


def test_cancel_subscription_sends_delete(stripe_server: tuple[str, list[dict[str, Any]]]) -> None:
    base, requests = stripe_server
    requests.clear()
    provider = StripeProvider("sk_test_local", api_base=base, max_network_retries=0)
    assert provider.cancel_subscription("sub_123", idempotency_key="dunning-sub_123-exhausted") == "canceled"
    assert [(r["method"], r["path"]) for r in requests] == [("DELETE", "/v1/subscriptions/sub_123")]
    headers = {k.lower(): v for k, v in requests[0]["headers"].items()}
    assert headers["authorization"] == "Bearer sk_test_local"
    assert headers["idempotency-key"] == "dunning-sub_123-exhausted"


def test_invoice_calls(stripe_server: tuple[str, list[dict[str, Any]]]) -> None:
    base, requests = stripe_server
    requests.clear()
    provider = StripeProvider("sk_test_local", api_base=base + "/", max_network_retries=0)
    assert provider.mark_uncollectible("in_1") == "uncollectible"
    paid = provider.retry_invoice("in_2")
    declined = provider.retry_invoice("in_declined")
    assert (paid.status, paid.invoice_status) == ("paid", "paid")
    assert (declined.status, declined.decline_code, declined.decline_class) == (
        "declined",
        "insufficient_funds",
        "soft",
    )
    assert [(r["method"], r["path"]) for r in requests] == [
        ("POST", "/v1/invoices/in_1/mark_uncollectible"),
        ("POST", "/v1/invoices/in_2/pay"),
        ("POST", "/v1/invoices/in_declined/pay"),
    ]


def test_stripe_provider_from_settings(
    stripe_server: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from dunning.config import ConfigError, Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DUNNING_CONFIG", raising=False)
    base, requests = stripe_server
    requests.clear()
    provider = StripeProvider.from_settings(
        Settings(stripe_api_key="sk_test_settings", stripe_api_base=base), max_network_retries=0
    )
    provider.cancel_subscription("sub_9")
    assert requests[-1]["path"] == "/v1/subscriptions/sub_9"
    with pytest.raises(ConfigError, match="DUNNING_STRIPE_API_KEY"):
        StripeProvider.from_settings(Settings(stripe_api_key=None))


# ======================================================================================
# Braintree webhooks
# ======================================================================================

BT = {"merchant_id": "merchant_1", "public_key": "public_1", "private_key": "private_1", "environment": "sandbox"}
GATEWAY = braintree.BraintreeGateway(
    braintree.Configuration(
        environment=braintree.Environment.Sandbox,
        merchant_id=BT["merchant_id"],
        public_key=BT["public_key"],
        private_key=BT["private_key"],
    )
)
K = braintree.WebhookNotification.Kind


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (K.SubscriptionChargedUnsuccessfully, EventKind.payment_failed),
        (K.SubscriptionWentPastDue, EventKind.payment_failed),
        (K.SubscriptionChargedSuccessfully, EventKind.payment_succeeded),
        (K.SubscriptionWentActive, EventKind.payment_succeeded),
        (K.SubscriptionCanceled, EventKind.subscription_canceled),
        (K.SubscriptionExpired, EventKind.subscription_canceled),
    ],
)
def test_braintree_sample_notifications(kind: str, expected: EventKind) -> None:
    sample = GATEWAY.webhook_testing.sample_notification(kind, "sub_bt_1")
    event = parse_braintree(sample["bt_signature"], sample["bt_payload"], **BT)
    assert isinstance(event, BillingEvent)
    assert (event.provider, event.kind, event.event_type) == ("braintree", expected, kind)
    assert event.subscription_id == "sub_bt_1"
    assert event.occurred_at.tzinfo is not None
    assert abs((datetime.now(UTC) - event.occurred_at).total_seconds()) < 120
    digest = hashlib.sha256(re.sub(rb"\s+", b"", sample["bt_payload"])).hexdigest()
    assert event.event_id == f"bt_{digest}"
    # the id is stable: the same payload as str, without its trailing newline, is the same event
    again = parse_braintree(sample["bt_signature"], sample["bt_payload"].decode().rstrip("\n"), **BT)
    assert again.event_id == event.event_id
    if expected is EventKind.payment_failed:
        assert event.decline_class == "unknown"  # the samples carry no processor response


def test_braintree_sample_charge_amount() -> None:
    sample = GATEWAY.webhook_testing.sample_notification(K.SubscriptionChargedUnsuccessfully, "sub_bt_2")
    event = parse_braintree(sample["bt_signature"], sample["bt_payload"], **BT)
    assert isinstance(event, BillingEvent)
    assert event.amount_due == 4999


def signed_notification(xml: str) -> tuple[str, bytes]:
    """Sign a notification exactly as `webhook_testing.sample_notification` does."""
    payload = base64.encodebytes(xml.encode())
    return f"{BT['public_key']}|{Crypto.sha1_hmac_hash(BT['private_key'], payload)}", payload


def failed_charge_xml(code: str, response_type: str, *, status: str = "processor_declined") -> str:
    return f"""
<notification>
  <timestamp type="datetime">2025-01-31T12:00:00Z</timestamp>
  <kind>subscription_charged_unsuccessfully</kind>
  <subject>
    <subscription>
      <id>sub_bt_rich</id>
      <status>Past Due</status>
      <failure-count type="integer">2</failure-count>
      <transactions type="array">
        <transaction>
          <id>txn_older</id>
          <status>settled</status>
          <amount>10.00</amount>
          <created-at type="datetime">2024-12-31T12:00:00Z</created-at>
          <processor-response-code>1000</processor-response-code>
        </transaction>
        <transaction>
          <id>txn_latest</id>
          <status>{status}</status>
          <amount>1200</amount>
          <currency-iso-code>JPY</currency-iso-code>
          <created-at type="datetime">2025-01-31T11:59:00Z</created-at>
          <processor-response-code>{code}</processor-response-code>
          <processor-response-type>{response_type}</processor-response-type>
          <processor-response-text>Declined</processor-response-text>
          <customer>
            <id>cus_bt_7</id>
            <email>grace@example.com</email>
            <first-name>Grace</first-name>
            <last-name>Hopper</last-name>
          </customer>
        </transaction>
      </transactions>
      <add_ons type="array"></add_ons>
      <discounts type="array"></discounts>
    </subscription>
  </subject>
</notification>"""


def test_braintree_decline_from_latest_transaction() -> None:
    signature, payload = signed_notification(failed_charge_xml("2001", "soft_declined"))
    event = parse_braintree(signature, payload, **BT)
    assert isinstance(event, BillingEvent)
    assert event.model_dump(exclude={"event_id"}) == {
        "provider": "braintree",
        "event_type": "subscription_charged_unsuccessfully",
        "kind": EventKind.payment_failed,
        "occurred_at": datetime(2025, 1, 31, 12, 0, tzinfo=UTC),
        "subscription_id": "sub_bt_rich",
        "customer_id": "cus_bt_7",
        "invoice_id": None,
        "customer_email": "grace@example.com",
        "customer_name": "Grace Hopper",
        "decline_code": "2001",
        "decline_message": "Declined",
        "decline_class": "soft",
        "attempt_count": 2,
        "next_provider_retry_at": None,
        "amount_due": 1200,  # JPY has no minor unit
        "currency": "JPY",
        "subscription_status": "past_due",
        "plan_id": None,
        "note": None,
    }


@pytest.mark.parametrize(
    ("code", "response_type", "klass"),
    [
        ("2004", "soft_declined", "hard"),  # the table wins
        ("2099", "soft_declined", "action_required"),
        ("2106", "hard_declined", "hard"),  # not in the table: the type decides
        ("2106", "soft_declined", "soft"),
        ("2106", "", "unknown"),
    ],
)
def test_braintree_decline_class(code: str, response_type: str, klass: str) -> None:
    signature, payload = signed_notification(failed_charge_xml(code, response_type))
    event = parse_braintree(signature, payload, **BT)
    assert isinstance(event, BillingEvent)
    assert (event.decline_code, event.decline_class) == (code, klass)


def test_braintree_successful_latest_transaction_is_not_a_decline() -> None:
    signature, payload = signed_notification(failed_charge_xml("1000", "approved", status="settled"))
    event = parse_braintree(signature, payload, **BT)
    assert isinstance(event, BillingEvent)
    assert (event.decline_code, event.decline_class) == (None, "unknown")


def test_braintree_unhandled_and_subjectless() -> None:
    sample = GATEWAY.webhook_testing.sample_notification(K.Check, "")
    event = parse_braintree(sample["bt_signature"], sample["bt_payload"], **BT)
    assert isinstance(event, Ignored) and (event.event_type, event.reason) == ("check", "unhandled_type")

    sample = GATEWAY.webhook_testing.sample_notification(K.SubscriptionTrialEnded, "sub_bt_3")
    event = parse_braintree(sample["bt_signature"], sample["bt_payload"], **BT)
    assert isinstance(event, Ignored) and event.reason == "unhandled_type"

    signature, payload = signed_notification(
        '<notification><timestamp type="datetime">2025-01-31T12:00:00Z</timestamp>'
        '<kind>subscription_went_past_due</kind><subject><check type="boolean">true</check></subject>'
        "</notification>"
    )
    event = parse_braintree(signature, payload, **BT)
    assert isinstance(event, Ignored) and event.reason == "no_subscription"


def _bt_error(signature: str | None, payload: str | bytes | None, **settings: Any) -> WebhookError:
    with pytest.raises(WebhookError) as err:
        parse_braintree(signature, payload, **{**BT, **settings})
    return err.value


def test_braintree_refusals() -> None:
    sample = GATEWAY.webhook_testing.sample_notification(K.SubscriptionWentPastDue, "sub_bt_1")
    sig, payload = sample["bt_signature"], sample["bt_payload"]
    public, mac = sig.split("|")
    tampered_mac = mac[:-1] + ("0" if mac[-1] != "0" else "1")

    error = _bt_error(f"{public}|{tampered_mac}", payload)
    assert (error.status, error.reason) == (400, "bad_signature")
    assert "InvalidSignatureError" in str(error) and "modified" in str(error)

    error = _bt_error(f"other_public|{mac}", payload)
    assert (error.reason, "no matching public key" in str(error)) == ("bad_signature", True)

    other = GATEWAY.webhook_testing.sample_notification(K.SubscriptionWentActive, "sub_bt_1")["bt_payload"]
    assert _bt_error(sig, other).reason == "bad_signature"  # signature of another payload
    assert _bt_error(sig, "not base64 <xml>!").reason == "bad_signature"  # illegal characters
    assert _bt_error(sig, payload, private_key="another_private").reason == "bad_signature"

    assert (_bt_error(None, payload).status, _bt_error(None, payload).reason) == (400, "missing_signature")
    assert (_bt_error(sig, None).status, _bt_error(sig, None).reason) == (400, "malformed_body")

    signature, garbage = signed_notification("this is not xml <<<")
    assert _bt_error(signature, garbage).reason == "malformed_body"

    error = _bt_error(sig, payload, private_key=None)
    assert (error.status, error.reason) == (404, "provider_disabled")
    assert "DUNNING_BRAINTREE_PRIVATE_KEY" in str(error)


# ======================================================================================
# Fake provider
# ======================================================================================

FAKE_SECRET = "fake-secret-for-tests"
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def fake_signed(body_obj: Any, *, secret: str = FAKE_SECRET, at: datetime = NOW) -> tuple[bytes, str]:
    body = json.dumps(body_obj).encode() if not isinstance(body_obj, bytes) else body_obj
    return body, sign_fake(body, secret, int(at.timestamp()))


def _fake_error(body: bytes, header: str | None, secret: str | None = FAKE_SECRET) -> WebhookError:
    with pytest.raises(WebhookError) as err:
        parse_fake(body, header, secret, now=NOW)  # type: ignore[arg-type]
    return err.value


def test_sign_fake_scheme() -> None:
    body = b'{"hello": "world"}'
    header = sign_fake(body, FAKE_SECRET, 1_700_000_000)
    expected = hmac.new(FAKE_SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_fake_round_trip() -> None:
    body_obj = build_fake_event(
        "payment_failed",
        "sub_fake_1",
        customer_id="cus_fake_1",
        customer_email="ada@example.com",
        customer_name="Ada",
        invoice_id="in_fake_1",
        decline_code="insufficient_funds",
        attempt_count=1,
        amount_due=4999,
        currency="usd",
        created=NOW - timedelta(minutes=1),
    )
    assert re.fullmatch(r"[0-9a-f]{32}", body_obj["id"])
    event = parse_fake(*fake_signed(body_obj), FAKE_SECRET, now=NOW)
    assert isinstance(event, BillingEvent)
    assert event.model_dump(exclude_none=True) == {
        "provider": "fake",
        "event_id": body_obj["id"],
        "event_type": "payment_failed",
        "kind": EventKind.payment_failed,
        "occurred_at": NOW - timedelta(minutes=1),
        "subscription_id": "sub_fake_1",
        "customer_id": "cus_fake_1",
        "invoice_id": "in_fake_1",
        "customer_email": "ada@example.com",
        "customer_name": "Ada",
        "decline_code": "insufficient_funds",
        "decline_class": "soft",
        "attempt_count": 1,
        "amount_due": 4999,
        "currency": "USD",
    }


@pytest.mark.parametrize("type_", sorted(FAKE_TYPES))
def test_fake_types(type_: str) -> None:
    event = parse_fake(*fake_signed(build_fake_event(type_, "sub_fake_2", id="evt_fake_2")), FAKE_SECRET, now=NOW)
    assert isinstance(event, BillingEvent)
    assert (event.kind, event.event_id, event.subscription_id) == (FAKE_TYPES[type_], "evt_fake_2", "sub_fake_2")
    expected_class = {"payment_failed": "unknown", "payment_action_required": "action_required"}.get(type_)
    assert event.decline_class == expected_class


def test_fake_created_unix_and_default_now() -> None:
    created = int(NOW.timestamp())
    body = {"id": "evt_u", "type": "payment_succeeded", "created": created, "data": {"subscription_id": "s"}}
    event = parse_fake(*fake_signed(body), FAKE_SECRET, now=NOW)
    assert isinstance(event, BillingEvent) and event.occurred_at == NOW
    built = build_fake_event("payment_succeeded", "s")
    assert abs((datetime.now(UTC) - datetime.fromisoformat(built["created"])).total_seconds()) < 60


def test_fake_signature_refusals() -> None:
    body, header = fake_signed(build_fake_event("payment_failed", "sub_x", created=NOW))
    assert _fake_error(body.replace(b"sub_x", b"sub_y"), header).reason == "bad_signature"
    assert _fake_error(*fake_signed(body, secret="wrong")).reason == "bad_signature"
    assert _fake_error(body, "t=abc,v1=00").reason == "bad_signature"
    assert _fake_error(body, "v1=00").reason == "bad_signature"
    error = _fake_error(body, None)
    assert (error.status, error.reason) == (400, "missing_signature")
    error = _fake_error(body, header, secret=None)
    assert (error.status, error.reason) == (404, "provider_disabled")
    assert "DUNNING_FAKE_WEBHOOK_SECRET" in str(error)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_fake_stale(offset: int) -> None:
    body, header = fake_signed(build_fake_event("payment_failed", "sub_x"), at=NOW + timedelta(seconds=offset))
    error = _fake_error(body, header)
    assert (error.status, error.reason) == (400, "stale_timestamp")


@pytest.mark.parametrize("offset", [-299, 0, 299])
def test_fake_within_tolerance(offset: int) -> None:
    body, header = fake_signed(build_fake_event("payment_failed", "sub_x"), at=NOW + timedelta(seconds=offset))
    assert isinstance(parse_fake(body, header, FAKE_SECRET, now=NOW), BillingEvent)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not JSON"),
        (b'"a string"', "not a JSON object"),
        ({"id": "e", "type": "payment_failed", "data": {"subscription_id": "s"}}, "created"),
        ({"id": "e", "type": "payment_failed", "created": "yesterday", "data": {}}, "created"),
        ({"id": "e", "type": "payment_failed", "created": 1, "data": {"subscription_id": "s", "attempt_count": -1}},
         "data.attempt_count"),
        ({"id": "e", "type": "payment_failed", "created": 1, "data": {"subscription_id": "s", "atempt_count": 1}},
         "data.atempt_count"),
        ({"id": "e", "type": "payment_failed", "created": 1, "data": {"subscription_id": "s", "currency": "dollars"}},
         "data.currency"),
        ({"id": "", "type": "payment_failed", "created": 1, "data": {}}, "id"),
    ],
)  # fmt: skip
def test_fake_malformed_body_names_the_field(body: Any, named: str) -> None:
    error = _fake_error(*fake_signed(body))
    assert (error.status, error.reason) == (400, "malformed_body")
    assert named in str(error)


def test_fake_ignored() -> None:
    body = {"id": "evt_n", "type": "payment_failed", "created": 1_738_324_800, "data": {"customer_id": "c"}}
    assert parse_fake(*fake_signed(body), FAKE_SECRET, now=NOW) == Ignored(
        "fake", "evt_n", "payment_failed", "no_subscription"
    )
    body = {"id": "evt_t", "type": "charge_refunded", "created": 1_738_324_800, "data": {"subscription_id": "s"}}
    assert parse_fake(*fake_signed(body), FAKE_SECRET, now=NOW) == Ignored(
        "fake", "evt_t", "charge_refunded", "unhandled_type"
    )


def test_build_fake_event_validates() -> None:
    with pytest.raises(ValueError, match="unknown fake event type 'payment_exploded'"):
        build_fake_event("payment_exploded", "sub_1")
    with pytest.raises(ValueError, match="data.amount_due"):
        build_fake_event("payment_failed", "sub_1", amount_due=-5)
    with pytest.raises(ValueError, match="data.colour"):
        build_fake_event("payment_failed", "sub_1", colour="red")
    body = build_fake_event("payment_failed", "sub_1", customer_id=None, next_provider_retry_at=NOW)
    assert body["data"] == {"subscription_id": "sub_1", "next_provider_retry_at": "2025-01-31T12:00:00Z"}
    json.dumps(body)  # JSON-ready


def test_plan_id_from_the_first_invoice_line() -> None:
    line = {"object": "line_item", "price": {"id": "price_pro_monthly", "object": "price"}, "plan": {"id": "plan_old"}}
    invoice = stripe_invoice(lines={"object": "list", "data": [line], "has_more": False})
    event = parse_signed(stripe_event("invoice.payment_failed", invoice))
    assert isinstance(event, BillingEvent) and event.plan_id == "price_pro_monthly"
    older = stripe_invoice(lines={"object": "list", "data": [{"plan": {"id": "plan_old"}}]})
    assert parse_signed(stripe_event("invoice.payment_failed", older)).plan_id == "plan_old"
    assert parse_signed(stripe_event("invoice.payment_failed", stripe_invoice())).plan_id is None
