"""Provider reads (Stripe, Braintree) against the recording HTTP server: the ProviderView
each answers, the errors, and that a read never writes (GETs only)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest

from dunning.config import ConfigError, Settings
from dunning.providers.actions import ProviderError
from dunning.providers.braintree_reads import BraintreeReads
from dunning.providers.reads import reader_for
from dunning.providers.stripe import StripeProvider
from dunning.providers.stripe_reads import StripeReads
from dunning.reconcile import ProviderView
from tests.provider_server import Recorder, server
from tests.test_provider_actions import BT_SETTINGS, KEY, MERCHANT, NO_STORE, clean_env

__all__ = ["clean_env", "server"]

T0, T1, T2 = 1767225600, 1767229200, 1767232800  # 2026-01-01 00:00, 01:00, 02:00 UTC
utc = partial(datetime.fromtimestamp, tz=UTC)


# --- Stripe ------------------------------------------------------------------------------
SUB, PI = "/v1/subscriptions/sub_x", "/v1/payment_intents/pi_1"


def stripe_reads(server: Recorder) -> StripeReads:
    reader = reader_for("stripe", Settings(stripe_api_key=KEY, stripe_api_base=server.base), NO_STORE)
    assert isinstance(reader, StripeReads) and reader.name == "stripe"
    return reader


def invoice(status: str, *, remaining: int = 1250, attempts: int = 1, pi: str | None = "pi_1") -> dict[str, Any]:
    payments = [{"id": "inpay_1", "object": "invoice_payment", "created": T0, "is_default": True,
                 "payment": {"type": "payment_intent", "payment_intent": pi}}] if pi else []  # fmt: skip
    return {
        "id": "in_1", "object": "invoice", "status": status, "amount_due": 2000, "amount_remaining": remaining,
        "attempt_count": attempts, "status_transitions": {"finalized_at": T0},
        "payments": {"object": "list", "url": "/v1/invoice_payments", "has_more": False, "data": payments},
    }  # fmt: skip


def subscription(status: str, latest_invoice: Any) -> dict[str, Any]:
    return {"id": "sub_x", "object": "subscription", "status": status, "latest_invoice": latest_invoice}


def payment_intent(status: str, charge_status: str | None, created: int = T1) -> dict[str, Any]:
    charge = {"id": "ch_1", "object": "charge", "status": charge_status, "created": created} if charge_status else None
    return {"id": "pi_1", "object": "payment_intent", "status": status, "latest_charge": charge}


def view(status: str, state: Any = None, amount: int | None = None, **kw: Any) -> ProviderView:
    return ProviderView(status=status, invoice_id=state and "in_1", invoice_state=state, amount_due=amount, **kw)


STRIPE_CASES = {
    "past due, open invoice failed": ("past_due", invoice("open"), payment_intent("requires_payment_method", "failed"),
                                      view("past_due", "open", 1250, failed_at=utc(T1))),
    "open, attempted, no payment intent": ("past_due", invoice("open", pi=None), None,
                                           view("past_due", "open", 1250, failed_at=utc(T0))),
    "paid invoice": ("active", invoice("paid", remaining=0), None, view("active", "paid", 0)),
    "processing payment intent": ("past_due", invoice("open"), payment_intent("processing", "pending", T2),
                                  view("past_due", "open", 1250, failed_at=utc(T0), payment_processing=True,
                                       payment_started_at=utc(T2))),
    "succeeded, invoice still open": ("past_due", invoice("open", attempts=0),
                                      payment_intent("succeeded", "succeeded", T2),
                                      view("past_due", "open", 1250, payment_started_at=utc(T2))),
    "canceled": ("canceled", invoice("void", remaining=0), None, view("canceled", "void", 0)),
    "no invoice": ("trialing", None, None, view("trialing")),
}  # fmt: skip


@pytest.mark.parametrize(("status", "latest", "pi", "expected"), STRIPE_CASES.values(), ids=STRIPE_CASES.keys())
def test_stripe_read(server: Recorder, clean_env: None, status: str, latest: Any, pi: Any, expected: Any) -> None:
    server.json("GET", SUB, 200, subscription(status, latest))
    if pi:
        server.json("GET", PI, 200, pi)
    assert stripe_reads(server).read_subscription("sub_x") == expected
    # only GETs: the subscription (latest invoice and its payments expanded), then the open invoice's payment intent
    assert server.calls() == [("GET", SUB)] + ([("GET", PI)] if pi else [])
    assert server.requests[0].query == {"expand[0]": ["latest_invoice"], "expand[1]": ["latest_invoice.payments"]}
    assert all(r.query == {"expand[0]": ["latest_charge"]} for r in server.requests[1:])


@pytest.mark.parametrize(
    ("status", "kind", "retryable", "hint"),
    [(404, "invalid_request_error", False, "No such subscription"), (500, "api_error", True, ""),
     (429, "rate_limit_error", True, ""), (401, "invalid_request_error", False, "DUNNING_STRIPE_API_KEY")],
)  # fmt: skip
def test_stripe_read_errors(server: Recorder, status: int, kind: str, retryable: bool, hint: str) -> None:
    body = {"error": {"type": kind, "message": "No such subscription: 'sub_x'" if status == 404 else "no"}}
    server.json("GET", SUB, status, body, **{"Stripe-Should-Retry": "false"})
    reader = StripeReads(StripeProvider(KEY, api_base=server.base, max_network_retries=0))
    with pytest.raises(
        ProviderError, match=rf"^stripe: read subscription 'sub_x' failed \(HTTP {status}.*{hint}"
    ) as info:
        reader.read_subscription("sub_x")
    assert info.value.retryable is retryable and info.value.status == status and info.value.provider == "stripe"
    assert server.calls() == [("GET", SUB)]


def test_stripe_payment_intent_read_error_names_the_subscription(server: Recorder, clean_env: None) -> None:
    server.json("GET", SUB, 200, subscription("past_due", invoice("open")))
    server.json("GET", PI, 503, {"error": {"type": "api_error", "message": "down"}}, **{"Stripe-Should-Retry": "false"})
    with pytest.raises(ProviderError, match="read payment intent 'pi_1' of subscription 'sub_x'") as info:
        stripe_reads(server).read_subscription("sub_x")
    assert info.value.retryable is True


# --- Braintree ---------------------------------------------------------------------------
BT_SUB = f"/merchants/{MERCHANT}/subscriptions/sub_bt"
JAN5, DEC5 = "2026-01-05T10:00:00Z", "2025-12-05T10:00:00Z"


def bt_reads(server: Recorder) -> BraintreeReads:
    reader = reader_for("braintree", Settings(**BT_SETTINGS, braintree_api_base=server.base), NO_STORE)
    assert isinstance(reader, BraintreeReads) and reader.name == "braintree"
    return reader


def bt_txn(txn_id: str, status: str, created: str, currency: str = "USD") -> str:
    return (f"<transaction><id>{txn_id}</id><status>{status}</status><type>sale</type><amount>12.50</amount>"
            f"<currency-iso-code>{currency}</currency-iso-code><created-at type='datetime'>{created}</created-at>"
            f"<subscription-id>sub_bt</subscription-id></transaction>")  # fmt: skip


def bt_sub(status: str, balance: str, *txns: str) -> str:
    return (f"<subscription><id>sub_bt</id><status>{status}</status><balance>{balance}</balance>"
            f"<transactions type='array'>{''.join(txns)}</transactions></subscription>")  # fmt: skip


def bt_view(status: str, txn: str | None, state: Any = None, amount: int = 0, **kw: Any) -> ProviderView:
    return ProviderView(status=status, invoice_id=txn, invoice_state=state, amount_due=amount, **kw)


AT_JAN5 = datetime(2026, 1, 5, 10, tzinfo=UTC)
DECLINED, SETTLED = bt_txn("txn_no", "processor_declined", DEC5), bt_txn("txn_ok", "settled", DEC5)
BT_CASES = {  # transactions listed oldest first on purpose: the newest is found by created_at
    "past due, balance, declined": (bt_sub("Past Due", "12.50", SETTLED, bt_txn("txn_no", "processor_declined", JAN5)),
                                    bt_view("past_due", "txn_no", "open", 1250, failed_at=AT_JAN5)),
    "active after a settled retry": (bt_sub("Active", "0.00", DECLINED, bt_txn("txn_re", "settled", JAN5)),
                                     bt_view("active", "txn_re", "paid")),
    "active after a plain renewal": (bt_sub("Active", "0.00", SETTLED, bt_txn("txn_2", "settled", JAN5)),
                                     bt_view("active", "txn_2")),
    "retry submitted for settlement": (bt_sub("Active", "0.00", DECLINED, bt_txn("txn_re", "submitted_for_settlement",
                                       JAN5)), bt_view("active", "txn_re", "paid", payment_processing=True,
                                                       payment_started_at=AT_JAN5)),
    "canceled": (bt_sub("Canceled", "0.00", DECLINED), bt_view("canceled", "txn_no")),
    "expired": (bt_sub("Expired", "0.00", DECLINED), bt_view("canceled", "txn_no")),
    "canceled with a balance": (bt_sub("Canceled", "12.50", DECLINED), bt_view("canceled", "txn_no", "open", 1250)),
    "pending": (bt_sub("Pending", "0.00"), bt_view("trialing", None)),
    "yen balance": (bt_sub("Past Due", "1250", bt_txn("txn_no", "failed", JAN5, currency="JPY")),
                    bt_view("past_due", "txn_no", "open", 1250, failed_at=AT_JAN5)),
}  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), BT_CASES.values(), ids=BT_CASES.keys())
def test_braintree_read(server: Recorder, clean_env: None, body: str, expected: ProviderView) -> None:
    server.xml("GET", BT_SUB, 200, body)
    assert bt_reads(server).read_subscription("sub_bt") == expected
    assert server.calls() == [("GET", BT_SUB)]  # subscription.find only: no write


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (401, False), (500, True), (503, True)])
def test_braintree_read_errors(server: Recorder, clean_env: None, status: int, retryable: bool) -> None:
    server.xml("GET", BT_SUB, status, "")
    with pytest.raises(ProviderError) as info:
        bt_reads(server).read_subscription("sub_bt")
    assert info.value.retryable is retryable and info.value.status == status and info.value.provider == "braintree"
    assert str(info.value).startswith(f"braintree: read subscription 'sub_bt' failed (HTTP {status}")
    assert server.calls() == [("GET", BT_SUB)]


# --- both, and reader_for ---------------------------------------------------------------


def test_unreachable_is_retryable(clean_env: None) -> None:
    dead = "http://127.0.0.1:9"
    for reader in (StripeReads(StripeProvider(KEY, api_base=dead, max_network_retries=0)),
                   reader_for("braintree", Settings(**BT_SETTINGS, braintree_api_base=dead), NO_STORE)):  # fmt: skip
        with pytest.raises(ProviderError, match="read subscription 'sub_x' failed") as info:
            reader.read_subscription("sub_x")
        assert info.value.retryable is True and info.value.status is None


def test_reader_for_config_errors_are_the_actions_and_unknown_names_are_refused(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="DUNNING_STRIPE_API_KEY"):
        reader_for("stripe", Settings(), NO_STORE)
    with pytest.raises(ConfigError, match="DUNNING_BRAINTREE_MERCHANT_ID"):
        reader_for("braintree", Settings(braintree_public_key="p", braintree_private_key="s"), NO_STORE)
    for name in ("paypal", "Stripe", ""):
        with pytest.raises(ValueError, match=repr(name)):
            reader_for(name, Settings(), NO_STORE)
