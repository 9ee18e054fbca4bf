"""Real provider adapters end to end through the campaign workflow, on the time-skipping
server: the braintree and stripe libraries talk to the recording HTTP server on loopback
(tests/provider_server.py), and the test checks the exact calls the engine made.

Braintree: the engine drives `subscription.retry_charge` on the soft policy's days and
cancels once on exhaustion. Stripe: Smart Retries run at Stripe (provider mode), so the
engine never pays an invoice itself; on exhaustion it cancels once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from activities.payments import idempotency_key
from dunning.config import ProviderPolicy
from dunning.contracts import BillingEvent, EventKind
from dunning.providers import fake_state
from dunning.store.entitlements import get_entitlement
from tests.provider_server import Recorder, error_xml, server, transaction_xml
from tests.temporal_fixtures import ledger, running_worker
from workflows.campaign import DunningCampaign

__all__ = ["server"]  # the recording HTTP server fixture

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def days_after(anchor: datetime, times) -> list[float]:
    return [round((t - anchor) / DAY, 2) for t in times]


# ======================================================================================
# Braintree: engine-driven retries
# ======================================================================================

MERCHANT = "merchant_wf"
TXNS = f"/merchants/{MERCHANT}/transactions"


async def test_braintree_retries_on_the_soft_days_then_cancels_once(tenv, new_sub, store, settings, mailbox, server: Recorder):
    sub, cus = new_sub("sub_bt"), "cus_bt"
    declined = transaction_xml("processor_declined", "2001", "soft_declined", "txn_declined", subscription_id=sub)
    server.xml("POST", TXNS, 422, error_xml("Insufficient Funds", inner=declined))
    cancel = f"/merchants/{MERCHANT}/subscriptions/{sub}/cancel"
    server.xml("PUT", cancel, 200, f"<subscription><id>{sub}</id><status>Canceled</status></subscription>")
    settings = settings.model_copy(update={
        "braintree_merchant_id": MERCHANT, "braintree_public_key": "public_wf", "braintree_private_key": "private_wf",
        "braintree_api_base": server.base,
    })  # fmt: skip

    async with running_worker(tenv, settings, store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(sub, cus, "jo@example.com", anchor, provider="braintree", decline_class="soft")
        state = await handle.result()

    assert state.outcome == "exhausted"
    assert server.calls() == [("POST", TXNS)] * 4 + [("PUT", cancel)]  # four retries, one cancel
    for request in server.requests[:4]:
        txn = request.xml["transaction"]
        assert txn["subscription_id"] == sub and txn["type"] == "sale"
        assert txn["options"] == {"submit_for_settlement": True}
    tried = ledger(store, sub, "dunning.retry_attempted")
    assert days_after(anchor, [e.occurred_at for e in tried]) == [1.0, 3.0, 5.0, 7.0]  # the soft policy's days
    assert {(e.data["status"], e.data["decline_code"], e.data["decline_class"]) for e in tried} == {
        ("declined", "2001", "soft")
    }
    assert [(r.outcome, r.decline_class) for r in state.retries] == [("declined", "soft")] * 4
    assert state.terminal_action == "cancel: canceled"
    assert len(ledger(store, sub, "dunning.exhausted")) == 1 and len(ledger(store, sub, "bad_debt.entered")) == 1
    assert get_entitlement(store, sub) == "canceled"
    assert fake_state.calls(store.engine) == []  # the fake provider was never used
    assert mailbox.steps() == ["first_notice", "reminder", "final_notice"]


# ======================================================================================
# Stripe: provider-mode retries
# ======================================================================================

STRIPE_KEY = "sk_test_workflow"


def stripe_settings(settings, server: Recorder, **policy):
    updated = settings.model_copy(update={"stripe_api_key": STRIPE_KEY, "stripe_api_base": server.base})
    if policy:
        providers = {**settings.campaign.providers, "stripe": ProviderPolicy(retries="provider", **policy)}
        campaign = settings.campaign.model_copy(update={"providers": providers})
        updated = updated.model_copy(update={"campaign": campaign})
    return updated


async def test_stripe_engine_never_pays_and_cancels_once_on_exhaustion(
    tenv, new_sub, store, settings, mailbox, server: Recorder
):
    sub, cus = new_sub("sub_st"), "cus_st"
    server.json("DELETE", f"/v1/subscriptions/{sub}", 200, {"id": sub, "object": "subscription", "status": "canceled"})

    async with running_worker(tenv, stripe_settings(settings, server), store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(
            sub, cus, "kim@example.com", anchor, provider="stripe", decline_class="soft", invoice_id="in_st"
        )
        await tenv.sleep(3 * DAY)
        # A Smart Retry failed at Stripe: the engine observes it (the class is now hard) ...
        retry_failed = BillingEvent(
            provider="stripe", event_id="evt_st_2", event_type="invoice.payment_failed", kind=EventKind.payment_failed,
            occurred_at=await tenv.get_current_time(), subscription_id=sub, customer_id=cus, invoice_id="in_st",
            decline_code="expired_card", decline_class="hard", attempt_count=2,
        )  # fmt: skip
        await handle.signal(DunningCampaign.billing_event, retry_failed)
        await tenv.sleep(HOUR)
        observed = await dunning.status(sub)
        assert observed.decline_class == "hard" and observed.provider_attempts == 2
        assert "class:update_payment_method" in mailbox.steps()
        # ... and a new card is Stripe's to retry, not the engine's
        card_updated = retry_failed.model_copy(update={
            "event_id": "evt_st_3", "event_type": "customer.subscription.updated",
            "kind": EventKind.payment_method_updated, "decline_code": None, "decline_class": None,
            "attempt_count": None, "occurred_at": await tenv.get_current_time(),
        })  # fmt: skip
        await handle.signal(DunningCampaign.billing_event, card_updated)
        state = await handle.result()

    assert state.outcome == "exhausted"
    assert server.calls() == [("DELETE", f"/v1/subscriptions/{sub}")]  # no /v1/invoices/.../pay: Smart Retries' job
    (request,) = server.requests
    assert request.headers["idempotency-key"] == idempotency_key(sub, anchor, "terminal")
    assert request.headers["authorization"] == f"Bearer {STRIPE_KEY}"
    assert state.retries == [] and ledger(store, sub, "dunning.retry_attempted") == []
    assert state.terminal_action == "cancel: canceled"
    assert len(ledger(store, sub, "bad_debt.entered")) == 1
    assert get_entitlement(store, sub) == "canceled"
    assert mailbox.steps() == ["first_notice", "class:update_payment_method", "reminder", "final_notice"]


async def test_stripe_mark_unpaid_on_exhaustion_marks_the_invoice_uncollectible_once(
    tenv, new_sub, store, settings, mailbox, server: Recorder
):
    sub = new_sub("sub_st_unpaid")
    path = "/v1/invoices/in_unpaid/mark_uncollectible"
    server.json("POST", path, 200, {"id": "in_unpaid", "object": "invoice", "status": "uncollectible"})

    async with running_worker(tenv, stripe_settings(settings, server, on_exhaustion="mark_unpaid"), store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(
            sub, "cus_st_unpaid", "lu@example.com", anchor, provider="stripe", decline_class="soft",
            invoice_id="in_unpaid",
        )  # fmt: skip
        state = await handle.result()

    assert state.outcome == "exhausted" and state.terminal_action == "mark_unpaid: uncollectible"
    assert server.calls() == [("POST", path)]
    assert server.requests[0].headers["idempotency-key"] == idempotency_key(sub, anchor, "terminal")
    assert store.get_subscription(sub).status == "unpaid"


async def test_stripe_answering_401_at_exhaustion_is_recorded_once_and_the_campaign_ends(
    tenv, new_sub, store, settings, mailbox, server: Recorder
):
    sub = new_sub("sub_st_401")
    error = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_***flow"}}
    server.json("DELETE", f"/v1/subscriptions/{sub}", 401, error)

    async with running_worker(tenv, stripe_settings(settings, server), store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(
            sub, "cus_st_401", "kim@example.com", anchor, provider="stripe", decline_class="soft", invoice_id="in_401"
        )
        state = await handle.result()  # ends: no endless retry of a call the provider refuses

    assert server.calls() == [("DELETE", f"/v1/subscriptions/{sub}")]  # asked once, never again
    assert state.outcome == "exhausted" and state.terminal_action == "cancel: failed"
    assert state.stage == "needs_attention"
    (failed,) = ledger(store, sub, "dunning.action_failed")
    assert failed.step_key == "terminal" and failed.data["error"] == "ProviderError"
    assert "401" in failed.data["message"] or "API Key" in failed.data["message"]
    assert len(ledger(store, sub, "dunning.exhausted")) == 1
    assert store.get_subscription(sub).status != "past_due"  # the projection is not stuck
    assert store.unconfirmed_deliveries() == []
