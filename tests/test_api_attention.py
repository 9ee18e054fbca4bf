"""The host app asks: does this customer need attention, what are they entitled to?
Answered from the store alone (these routes work with Temporal down), and in agreement
with how the campaign ended, in every end state."""

from datetime import UTC, datetime, timedelta

import pytest

from dunning import ending
from dunning.config import ATTENTION_MESSAGE
from dunning.contracts import BillingEvent, CampaignEnd, EntitlementChange, EventKind
from dunning.projection import decide
from dunning.store import campaign_writes
from dunning.store.entitlements import requires_attention
from tests.api_helpers import api_client, api_settings
from tests.webhook_payloads import API_TOKEN

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)
DAY = timedelta(days=1)


async def no_temporal():
    raise AssertionError("the attention routes must not reach Temporal")


def event(sub: str, cus: str, kind: EventKind, at: datetime, n: str = "") -> BillingEvent:
    return BillingEvent(
        provider="fake", event_id=f"evt_{sub}_{kind.value}{n}", event_type=f"fake.{kind.value}", kind=kind,
        occurred_at=at, subscription_id=sub, customer_id=cus,
    )  # fmt: skip


def fail(store, sub: str, cus: str, at: datetime = ANCHOR) -> None:
    assert store.apply_projection(event(sub, cus, EventKind.payment_failed, at), decide).action == "start"


def limit(store, sub: str, cus: str, level: str = "limited") -> None:
    change = EntitlementChange(
        subscription_id=sub, customer_id=cus, campaign_started_at=ANCHOR, key=f"level:{level}", level=level,
        previous="full", at=ANCHOR + 7 * DAY,
    )  # fmt: skip
    assert campaign_writes.change_entitlement(store, change) is None


def finish(store, sub: str, cus: str, outcome: str, kind: str = "", on_exhaustion: str = "cancel") -> None:
    end = CampaignEnd(
        subscription_id=sub, customer_id=cus, campaign_started_at=ANCHOR, outcome=outcome, reason="test",
        kind=kind, at=ANCHOR + 14 * DAY, on_exhaustion=on_exhaustion,
    )  # fmt: skip
    campaign_writes.finish_campaign(store, end, 86400)


async def test_attention_and_entitlement_follow_the_campaign(settings, store):
    fail(store, "sub_a1", "cus_a")
    async with api_client(api_settings(settings), store, no_temporal) as api:
        r = await api.get("/v1/customers/cus_a/attention", headers=BEARER)
        assert r.status_code == 200
        assert r.json() == {
            "customer_id": "cus_a",
            "requires_attention": True,
            "entitlement": "full",
            "message": ATTENTION_MESSAGE,
            "subscriptions": ["sub_a1"],
        }
        limit(store, "sub_a1", "cus_a")
        r = await api.get("/v1/subscriptions/sub_a1/entitlement", headers=BEARER)
        assert r.json()["entitlement"] == "limited" and r.json()["in_dunning"] is True
        assert (await api.get("/v1/customers/cus_a/attention", headers=BEARER)).json()["entitlement"] == "limited"

        store.apply_projection(event("sub_a1", "cus_a", EventKind.payment_succeeded, ANCHOR + 8 * DAY), decide)
        finish(store, "sub_a1", "cus_a", "recovered")
        r = await api.get("/v1/customers/cus_a/attention", headers=BEARER)
        assert r.json()["requires_attention"] is False and r.json()["message"] is None
        assert r.json()["entitlement"] == "full"

        r = await api.get("/v1/subscriptions/sub_nope/entitlement", headers=BEARER)
        assert r.status_code == 404 and "sub_nope" in r.json()["message"]
        r = await api.get("/v1/customers/cus_nobody/attention", headers=BEARER)
        assert r.status_code == 404 and r.json()["error"] == "unknown_customer" and "cus_nobody" in r.json()["message"]
        assert (await api.get("/v1/customers/cus_a/attention")).status_code == 401
        assert (await api.get("/v1/customers/cus_a/attention", headers={"Authorization": "Bearer x"})).status_code == 403


# (name, how it ends, status, entitlement, requires_attention, message)
END_STATES = [
    ("recovered", "recovered", "active", "full", False, None),
    ("resolved_voided", "invoice_voided", "active", "full", False, None),
    ("resolved_uncollectible", "invoice_marked_uncollectible", "uncollectible", "full", False, None),
    ("resolved_canceled", "subscription_canceled", "canceled", "canceled", False, None),
    ("exhausted_cancel", "exhausted:cancel", "canceled", "canceled", True, ending.MSG_EXHAUSTED),
    ("exhausted_unpaid", "exhausted:mark_unpaid", "unpaid", "canceled", True, ending.MSG_EXHAUSTED),
    ("recovered_after_cancel", "recovered_after_cancel", "canceled", "canceled", True, ending.MSG_AFTER_CANCEL),
    ("provider_cancelled", "provider_cancelled", "canceled", "canceled", False, None),
]


def drive(store, sub: str, cus: str, how: str) -> None:
    """Bring a subscription to an end state the way the engine does: billing events through
    the projection, campaign writes through the campaign's own transactions."""
    later = ANCHOR + 10 * DAY
    if how == "provider_cancelled":  # healthy, then cancelled at the provider: no campaign
        store.apply_projection(event(sub, cus, EventKind.payment_succeeded, ANCHOR), decide)
        store.apply_projection(event(sub, cus, EventKind.subscription_canceled, later), decide)
        return
    fail(store, sub, cus)
    limit(store, sub, cus, "suspended")
    if how == "recovered":
        store.apply_projection(event(sub, cus, EventKind.payment_succeeded, later), decide)
        finish(store, sub, cus, "recovered")
    elif how.startswith("exhausted:"):
        finish(store, sub, cus, "exhausted", on_exhaustion=how.split(":")[1])
    elif how == "recovered_after_cancel":
        finish(store, sub, cus, "exhausted")
        late = store.apply_projection(event(sub, cus, EventKind.payment_succeeded, ANCHOR + 15 * DAY), decide)
        assert late.action == "late_payment" and late.anchor_before == ANCHOR
        finish(store, sub, cus, "recovered_after_cancel")
    else:
        decision = store.apply_projection(event(sub, cus, EventKind(how), later), decide)
        assert decision.action == "resolve" and decision.kind == how
        finish(store, sub, cus, "resolved", kind=how)


@pytest.mark.parametrize("name,how,status,level,attention,message", END_STATES, ids=[e[0] for e in END_STATES])
async def test_every_end_state_answers_in_agreement_with_the_campaign(
    settings, store, name, how, status, level, attention, message
):
    sub, cus = f"sub_{name}", f"cus_{name}"
    drive(store, sub, cus, how)
    async with api_client(api_settings(settings), store, no_temporal) as api:
        ent = (await api.get(f"/v1/subscriptions/{sub}/entitlement", headers=BEARER)).json()
        att = (await api.get(f"/v1/customers/{cus}/attention", headers=BEARER)).json()
    assert (ent["status"], ent["entitlement"], ent["in_dunning"]) == (status, level, False)
    assert (att["requires_attention"], att["entitlement"], att["message"]) == (attention, level, message)
    assert ent["requires_attention"] is attention and ent["message"] == message
    if attention:
        assert "avoid service interruption" not in att["message"]  # the campaign is over: no false promise
    if how not in ("provider_cancelled",):
        outcome = how.split(":")[0] if how.startswith(("exhausted", "recovered")) else "resolved"
        assert ending.end_state(outcome, how, how.split(":")[-1])[1] == level  # the campaign's own end agrees


def test_requires_attention_takes_the_most_restrictive_subscription(store):
    fail(store, "sub_b1", "cus_b")
    fail(store, "sub_b2", "cus_b")
    limit(store, "sub_b2", "cus_b", "suspended")
    found = requires_attention(store, "cus_b", "Pay up, kindly.")
    assert found is not None
    assert found.requires_attention and found.entitlement == "suspended"
    assert found.subscriptions == ("sub_b1", "sub_b2") and found.message == "Pay up, kindly."


def test_the_python_client_answers_from_the_store_without_temporal(settings, store):
    from starter.client import DunningClient

    fail(store, "sub_c1", "cus_c")
    client = DunningClient(None, store, settings)  # type: ignore[arg-type]  # no Temporal client at all
    found = client.requires_attention("cus_c")
    assert found is not None and found.requires_attention and found.message == settings.attention_message
    assert client.requires_attention("cus_nobody") is None
