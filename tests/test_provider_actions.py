"""Provider actions (retry charge, cancel, mark unpaid) against a recording HTTP server.

No network: the stripe library (api_base) and the braintree library (a custom
Environment from `braintree_api_base`) talk to a server on 127.0.0.1 that records each
request (method, path, query, body, headers) and answers what the test scripted, in each
provider's own wire format (Stripe JSON, Braintree XML).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from dunning.config import ConfigError, Settings
from dunning.providers.actions import ChargeResult, ProviderError, provider_for
from dunning.providers.braintree_actions import BraintreeActions
from dunning.providers.stripe import StripeProvider
from dunning.providers.stripe_actions import StripeActions
from tests.provider_server import Recorder, error_xml, server, transaction_xml, validation_error

__all__ = ["server"]  # the recording server fixture, shared with tests/test_provider_workflow.py


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No dunning.toml and no DUNNING_* variables leak into Settings()."""
    monkeypatch.chdir(tmp_path)
    import os

    for name in list(os.environ):
        if name.startswith("DUNNING_"):
            monkeypatch.delenv(name)


NO_STORE: Any = None  # stripe and braintree adapters do not use the store


# ======================================================================================
# Stripe
# ======================================================================================

KEY = "sk_test_local"


def stripe_actions(server: Recorder) -> StripeActions:
    return StripeActions(StripeProvider(KEY, api_base=server.base, max_network_retries=0))


def card_error(code: str) -> dict[str, Any]:
    return {"error": {"type": "card_error", "code": "card_declined", "decline_code": code, "message": "declined"}}


def test_stripe_cancel_once_with_the_idempotency_key(server: Recorder, clean_env: None) -> None:
    server.json("DELETE", "/v1/subscriptions/sub_x", 200, {"id": "sub_x", "object": "subscription", "status": "canceled"})
    actions = provider_for("stripe", Settings(stripe_api_key=KEY, stripe_api_base=server.base), NO_STORE)
    assert actions.name == "stripe"
    assert actions.cancel_subscription("sub_x", "dunning-sub_x-exhausted") == "canceled"
    assert server.calls() == [("DELETE", "/v1/subscriptions/sub_x")]
    assert server.requests[0].headers["idempotency-key"] == "dunning-sub_x-exhausted"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_stripe_cancel_of_a_cancelled_subscription_is_a_success(server: Recorder) -> None:
    # Stripe answers 404 to DELETE on a subscription that is already cancelled
    missing = {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such subscription"}}
    server.json("DELETE", "/v1/subscriptions/sub_gone", 404, missing)
    server.json("GET", "/v1/subscriptions/sub_gone", 200, {"id": "sub_gone", "object": "subscription", "status": "canceled"})
    assert stripe_actions(server).cancel_subscription("sub_gone", "k1") == "canceled"
    assert server.calls() == [("DELETE", "/v1/subscriptions/sub_gone"), ("GET", "/v1/subscriptions/sub_gone")]


def test_stripe_cancel_of_an_unknown_subscription_is_not_retryable(server: Recorder) -> None:
    missing = {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such subscription"}}
    server.json("DELETE", "/v1/subscriptions/sub_none", 404, missing)
    server.json("GET", "/v1/subscriptions/sub_none", 404, missing)
    with pytest.raises(ProviderError) as info:
        stripe_actions(server).cancel_subscription("sub_none", "k1")
    assert info.value.retryable is False and info.value.status == 404
    assert "stripe: cancel subscription 'sub_none' failed" in str(info.value)
    assert "No such subscription" in str(info.value)


def test_stripe_retry_charge_pays_the_invoice(server: Recorder) -> None:
    server.json("POST", "/v1/invoices/in_x/pay", 200, {"id": "in_x", "object": "invoice", "status": "paid"})
    result = stripe_actions(server).retry_charge("sub_x", "in_x", "dunning-sub_x-retry-1")
    assert result == ChargeResult("succeeded", reference="in_x")
    assert server.calls() == [("POST", "/v1/invoices/in_x/pay")]
    assert server.requests[0].headers["idempotency-key"] == "dunning-sub_x-retry-1"


def test_stripe_retry_charge_without_invoice_pays_the_open_one(server: Recorder) -> None:
    listing = {"object": "list", "url": "/v1/invoices", "has_more": False,
               "data": [{"id": "in_open", "object": "invoice", "status": "open"}]}  # fmt: skip
    server.json("GET", "/v1/invoices", 200, listing)
    server.json("POST", "/v1/invoices/in_open/pay", 200, {"id": "in_open", "object": "invoice", "status": "paid"})
    result = stripe_actions(server).retry_charge("sub_x", None, "k-open")
    assert result == ChargeResult("succeeded", reference="in_open")
    assert server.calls() == [("GET", "/v1/invoices"), ("POST", "/v1/invoices/in_open/pay")]
    assert server.requests[0].query == {"subscription": ["sub_x"], "status": ["open"], "limit": ["1"]}
    assert server.requests[1].headers["idempotency-key"] == "k-open"


def test_stripe_retry_charge_with_no_open_invoice_is_an_error(server: Recorder) -> None:
    server.json("GET", "/v1/invoices", 200, {"object": "list", "url": "/v1/invoices", "has_more": False, "data": []})
    with pytest.raises(ProviderError, match="has no open invoice") as info:
        stripe_actions(server).retry_charge("sub_x", None, "k")
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("code", "klass"),
    [("insufficient_funds", "soft"), ("expired_card", "hard"), ("authentication_required", "action_required")],
)
def test_stripe_card_decline_is_a_result(server: Recorder, code: str, klass: str) -> None:
    server.json("POST", "/v1/invoices/in_d/pay", 402, card_error(code))
    result = stripe_actions(server).retry_charge("sub_x", "in_d", "k")
    assert result == ChargeResult("declined", code, klass, reference="in_d")  # type: ignore[arg-type]
    assert server.calls() == [("POST", "/v1/invoices/in_d/pay")]


def test_stripe_pay_of_a_paid_invoice_is_a_success(server: Recorder) -> None:
    refused = {"error": {"type": "invalid_request_error", "message": "Invoice is already paid"}}
    server.json("POST", "/v1/invoices/in_p/pay", 400, refused)
    server.json("GET", "/v1/invoices/in_p", 200, {"id": "in_p", "object": "invoice", "status": "paid"})
    assert stripe_actions(server).retry_charge("sub_x", "in_p", "k") == ChargeResult("succeeded", reference="in_p")


def test_stripe_mark_unpaid_marks_the_invoice_uncollectible(server: Recorder) -> None:
    server.json(
        "POST", "/v1/invoices/in_u/mark_uncollectible", 200, {"id": "in_u", "object": "invoice", "status": "uncollectible"}
    )
    assert stripe_actions(server).mark_unpaid("sub_x", "in_u", "k-unpaid") == "uncollectible"
    assert server.calls() == [("POST", "/v1/invoices/in_u/mark_uncollectible")]
    assert server.requests[0].headers["idempotency-key"] == "k-unpaid"


def test_stripe_500_is_retryable(server: Recorder, clean_env: None) -> None:
    # through provider_for (library retries on); Stripe says not to retry, so one request
    server.json("POST", "/v1/invoices/in_x/pay", 500, {"error": {"type": "api_error", "message": "boom"}},
                **{"Stripe-Should-Retry": "false"})  # fmt: skip
    actions = provider_for("stripe", Settings(stripe_api_key=KEY, stripe_api_base=server.base), NO_STORE)
    with pytest.raises(ProviderError) as info:
        actions.retry_charge("sub_x", "in_x", "k")
    assert info.value.retryable is True and info.value.status == 500
    assert str(info.value).startswith("stripe: pay invoice 'in_x' of subscription 'sub_x' failed (HTTP 500")
    assert server.calls() == [("POST", "/v1/invoices/in_x/pay")]


def test_stripe_401_is_not_retryable_and_names_the_key(server: Recorder) -> None:
    server.json("DELETE", "/v1/subscriptions/sub_x", 401,
                {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****ocal"}})  # fmt: skip
    with pytest.raises(ProviderError) as info:
        stripe_actions(server).cancel_subscription("sub_x", "k")
    assert info.value.retryable is False and info.value.status == 401
    assert "DUNNING_STRIPE_API_KEY" in str(info.value)
    assert server.calls() == [("DELETE", "/v1/subscriptions/sub_x")]  # no state check after an auth error


def test_stripe_unreachable_is_retryable(server: Recorder) -> None:
    actions = StripeActions(StripeProvider(KEY, api_base="http://127.0.0.1:9", max_network_retries=0))
    with pytest.raises(ProviderError) as info:
        actions.cancel_subscription("sub_x", "k")
    assert info.value.retryable is True and info.value.status is None


# ======================================================================================
# Braintree
# ======================================================================================

MERCHANT = "merchant_1"
BT_SETTINGS = {"braintree_merchant_id": MERCHANT, "braintree_public_key": "public_1", "braintree_private_key": "private_1"}
TXNS = f"/merchants/{MERCHANT}/transactions"


def bt_actions(server: Recorder) -> Any:
    return provider_for("braintree", Settings(**BT_SETTINGS, braintree_api_base=server.base), NO_STORE)


def test_braintree_retry_charge_posts_a_sale_for_the_subscription(server: Recorder, clean_env: None) -> None:
    server.xml("POST", TXNS, 201, transaction_xml("submitted_for_settlement", "1000", "approved", "txn_ok"))
    actions = bt_actions(server)
    assert isinstance(actions, BraintreeActions) and actions.name == "braintree"
    assert actions.retry_charge("sub_bt", None, "k") == ChargeResult("succeeded", reference="txn_ok")
    assert server.calls() == [("POST", TXNS)]
    request = server.requests[0]
    body = request.xml["transaction"]
    assert body["subscription_id"] == "sub_bt"
    assert body["type"] == "sale"
    assert body["options"] == {"submit_for_settlement": True}
    assert not body.get("amount")  # the subscription's own balance is charged
    expected = base64.b64encode(b"public_1:private_1").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert request.headers["content-type"].startswith("application/xml")


@pytest.mark.parametrize(
    ("code", "response_type", "klass"),
    [("2001", "soft_declined", "soft"), ("2004", "hard_declined", "hard"), ("2099", "soft_declined", "action_required")],
)
def test_braintree_processor_decline(server: Recorder, clean_env: None, code: str, response_type: str, klass: str) -> None:
    inner = transaction_xml("processor_declined", code, response_type, "txn_no")
    server.xml("POST", TXNS, 422, error_xml("Declined", inner=inner))
    result = bt_actions(server).retry_charge("sub_bt", None, "k")
    assert result == ChargeResult("declined", code, klass, reference="txn_no")  # type: ignore[arg-type]


def test_braintree_retry_of_a_paid_subscription_succeeds(server: Recorder, clean_env: None) -> None:
    # 91531: no longer past due; Active means an earlier attempt collected the money
    errs = validation_error("transaction", "91531", "Subscription status must be Past Due in order to retry.")
    server.xml("POST", TXNS, 422, error_xml("Subscription status must be Past Due", errors=errs))
    server.xml("GET", f"/merchants/{MERCHANT}/subscriptions/sub_bt", 200,
               "<subscription><id>sub_bt</id><status>Active</status></subscription>")  # fmt: skip
    assert bt_actions(server).retry_charge("sub_bt", None, "k") == ChargeResult("succeeded")
    assert server.calls() == [("POST", TXNS), ("GET", f"/merchants/{MERCHANT}/subscriptions/sub_bt")]


def test_braintree_retry_of_a_cancelled_subscription_is_refused(server: Recorder, clean_env: None) -> None:
    errs = validation_error("transaction", "91531", "Subscription status must be Past Due in order to retry.")
    server.xml("POST", TXNS, 422, error_xml("Subscription status must be Past Due", errors=errs))
    server.xml("GET", f"/merchants/{MERCHANT}/subscriptions/sub_bt", 200,
               "<subscription><id>sub_bt</id><status>Canceled</status></subscription>")  # fmt: skip
    with pytest.raises(ProviderError, match="subscription is canceled, not past due") as info:
        bt_actions(server).retry_charge("sub_bt", None, "k")
    assert info.value.retryable is False


def test_braintree_cancel(server: Recorder, clean_env: None) -> None:
    path = f"/merchants/{MERCHANT}/subscriptions/sub_bt/cancel"
    server.xml("PUT", path, 200, "<subscription><id>sub_bt</id><status>Canceled</status></subscription>")
    assert bt_actions(server).cancel_subscription("sub_bt", "k") == "canceled"
    assert server.calls() == [("PUT", path)]


def test_braintree_cancel_of_a_cancelled_subscription_is_a_success(server: Recorder, clean_env: None) -> None:
    path = f"/merchants/{MERCHANT}/subscriptions/sub_bt/cancel"
    errs = validation_error("subscription", "81905", "Subscription has already been canceled.")
    server.xml("PUT", path, 422, error_xml("Subscription has already been canceled.", errors=errs))
    assert bt_actions(server).cancel_subscription("sub_bt", "k") == "canceled"


def test_braintree_other_refusal_is_not_retryable(server: Recorder, clean_env: None) -> None:
    path = f"/merchants/{MERCHANT}/subscriptions/sub_bt/cancel"
    errs = validation_error("subscription", "81901", "Subscription has been canceled and cannot be edited.")
    server.xml("PUT", path, 422, error_xml("nope", errors=errs))
    with pytest.raises(ProviderError, match="81901") as info:
        bt_actions(server).cancel_subscription("sub_bt", "k")
    assert info.value.retryable is False


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (502, True), (401, False), (404, False)])
def test_braintree_http_errors(server: Recorder, clean_env: None, status: int, retryable: bool) -> None:
    server.xml("POST", TXNS, status, "")
    with pytest.raises(ProviderError) as info:
        bt_actions(server).retry_charge("sub_bt", None, "k")
    assert info.value.retryable is retryable and info.value.status == status
    assert str(info.value).startswith(f"braintree: retry charge for subscription 'sub_bt' failed (HTTP {status}")
    if status == 401:
        assert "DUNNING_BRAINTREE_PUBLIC_KEY" in str(info.value)


def test_braintree_unreachable_is_retryable(clean_env: None) -> None:
    actions = provider_for("braintree", Settings(**BT_SETTINGS, braintree_api_base="http://127.0.0.1:9"), NO_STORE)
    with pytest.raises(ProviderError) as info:
        actions.cancel_subscription("sub_bt", "k")
    assert info.value.retryable is True


def test_braintree_mark_unpaid_is_refused_clearly(clean_env: None) -> None:
    actions = provider_for("braintree", Settings(**BT_SETTINGS), NO_STORE)
    with pytest.raises(ProviderError, match="no invoice to mark uncollectible") as info:
        actions.mark_unpaid("sub_bt", None, "k")
    assert info.value.retryable is False and "on_exhaustion" in str(info.value)


# ======================================================================================
# provider_for
# ======================================================================================


@pytest.mark.parametrize("name", ["paypal", "Stripe", "", "dunning.providers.fake"])
def test_unknown_provider_is_named(name: str, clean_env: None) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        provider_for(name, Settings(), NO_STORE)


def test_missing_settings_name_the_env_var(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="DUNNING_STRIPE_API_KEY"):
        provider_for("stripe", Settings(), NO_STORE)
    with pytest.raises(ConfigError) as info:
        provider_for("braintree", Settings(braintree_public_key="p", braintree_private_key="s"), NO_STORE)
    assert "DUNNING_BRAINTREE_MERCHANT_ID" in str(info.value) and "PUBLIC_KEY" not in str(info.value)
    with pytest.raises(ConfigError, match="DUNNING_BRAINTREE_ENVIRONMENT = 'mars'"):
        provider_for("braintree", Settings(**BT_SETTINGS, braintree_environment="mars"), NO_STORE)


@pytest.mark.parametrize("base", ["ftp://127.0.0.1:1", "http://127.0.0.1:1/api", "https://x:8443", "http://:80"])
def test_bad_braintree_api_base_is_named(base: str, clean_env: None) -> None:
    with pytest.raises(ConfigError, match="DUNNING_BRAINTREE_API_BASE"):
        provider_for("braintree", Settings(**BT_SETTINGS, braintree_api_base=base), NO_STORE)
