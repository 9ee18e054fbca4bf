"""The host app asks: does this customer need attention, what are they entitled to?
Answered from the store alone: these routes work with Temporal down."""

from datetime import UTC, datetime

from dunning.config import ATTENTION_MESSAGE
from dunning.store.entitlements import requires_attention, set_entitlement
from tests.api_helpers import api_client, api_settings
from tests.webhook_payloads import API_TOKEN

BEARER = {"Authorization": f"Bearer {API_TOKEN}"}
ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)


async def no_temporal():
    raise AssertionError("the attention routes must not reach Temporal")


async def test_attention_and_entitlement_follow_the_store(settings, store):
    store.begin_dunning("sub_a1", "cus_a", "fake", ANCHOR)
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
        set_entitlement(store, "sub_a1", "limited")
        r = await api.get("/v1/subscriptions/sub_a1/entitlement", headers=BEARER)
        assert r.json()["entitlement"] == "limited" and r.json()["in_dunning"] is True
        assert (await api.get("/v1/customers/cus_a/attention", headers=BEARER)).json()["entitlement"] == "limited"

        store.end_dunning("sub_a1", ANCHOR, "active")
        set_entitlement(store, "sub_a1", "full")
        r = await api.get("/v1/customers/cus_a/attention", headers=BEARER)
        assert r.json()["requires_attention"] is False and r.json()["message"] is None

        r = await api.get("/v1/subscriptions/sub_nope/entitlement", headers=BEARER)
        assert r.status_code == 404 and "sub_nope" in r.json()["message"]
        r = await api.get("/v1/customers/cus_nobody/attention", headers=BEARER)
        assert r.json()["requires_attention"] is False and r.json()["entitlement"] == "full"
        assert (await api.get("/v1/customers/cus_a/attention")).status_code == 401
        assert (await api.get("/v1/customers/cus_a/attention", headers={"Authorization": "Bearer x"})).status_code == 403


def test_requires_attention_takes_the_most_restrictive_subscription(store):
    store.begin_dunning("sub_b1", "cus_b", "fake", ANCHOR)
    store.begin_dunning("sub_b2", "cus_b", "fake", ANCHOR)
    set_entitlement(store, "sub_b2", "suspended")
    found = requires_attention(store, "cus_b", "Pay up, kindly.")
    assert found.requires_attention and found.entitlement == "suspended"
    assert found.subscriptions == ("sub_b1", "sub_b2") and found.message == "Pay up, kindly."
    assert store.events("sub_b1") == []  # no side effect


def test_the_python_client_answers_from_the_store_without_temporal(settings, store):
    from starter.client import DunningClient

    store.begin_dunning("sub_c1", "cus_c", "fake", ANCHOR)
    client = DunningClient(None, store, settings)  # no Temporal client at all
    found = client.requires_attention("cus_c")
    assert found.requires_attention and found.message == settings.attention_message
