"""Bad input changes nothing: refused webhooks write no inbox row and no projection and
start nothing; verified events the engine has no use for are recorded as ignored. Plus
the payment-service routes' auth, health and readiness. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import pytest

from dunning.store.schema import inbox, subscriptions
from dunning.store.store import Store
from starter.client import DunningClient
from tests.api_helpers import (  # noqa: F401
    RecordingClient,
    api,
    api_client,
    api_settings,
    count,
    nothing_written,
    post,
    subs,
    workflow_exists,
)
from tests.webhook_payloads import (
    API_TOKEN,
    FAKE_SECRET,
    STRIPE_SECRET,
    braintree_request,
    fake_request,
    stripe_event,
    stripe_header,
    stripe_invoice,
    stripe_request,
)

NOW = datetime.now(UTC).replace(microsecond=0)
MIB = 1024 * 1024


@pytest.fixture
async def offline(settings, store):
    """The API with a client that fails the test if Temporal is ever called."""
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    async with api_client(api_settings(settings), store, factory) as client:
        client.recorder = recorder
        yield client
    assert recorder.calls == []


def refused(response: httpx.Response, status: int, reason: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == reason and body["message"]
    return body["message"]


# --- signatures ------------------------------------------------------------------------
async def test_bad_or_missing_signatures_are_400_naming_the_reason_and_write_nothing(offline, store):
    path, body, headers = stripe_request("evt_1", "invoice.payment_failed", "sub_1", NOW)
    tampered = body.replace(b"4999", b"0001")
    message = refused(await offline.post(path, content=tampered, headers=headers), 400, "bad_signature")
    assert "DUNNING_STRIPE_WEBHOOK_SECRET" in message
    message = refused(await offline.post(path, content=body), 400, "missing_signature")
    assert "Stripe-Signature" in message
    wrong = {"Stripe-Signature": stripe_header(body, "whsec_wrong")}
    refused(await offline.post(path, content=body, headers=wrong), 400, "bad_signature")
    old = {"Stripe-Signature": stripe_header(body, STRIPE_SECRET, int(time.time()) - 3600)}
    refused(await offline.post(path, content=body, headers=old), 400, "stale_timestamp")

    path, body, headers = fake_request("payment_failed", "sub_1", NOW)
    refused(await offline.post(path, content=body, headers={"X-Dunning-Signature": "t=1,v1=00"}), 400, "bad_signature")
    refused(await offline.post(path, content=body), 400, "missing_signature")
    _, _, other = fake_request("payment_failed", "sub_1", NOW, secret="not-the-secret")
    refused(await offline.post(path, content=body, headers=other), 400, "bad_signature")

    path, body, headers = braintree_request("subscription_charged_unsuccessfully", "sub_1", NOW)
    forged = body.replace(b"public_api%7C", b"public_api%7C0")
    refused(await offline.post(path, content=forged, headers=headers), 400, "bad_signature")
    no_sig = urlencode({"bt_payload": "PG5vdGlmaWNhdGlvbi8+"}).encode()
    refused(await offline.post(path, content=no_sig, headers=headers), 400, "missing_signature")

    assert nothing_written(store)


async def test_bad_signature_starts_no_workflow_on_a_real_temporal(api, store, dunning, subs):
    sub = subs("sub_badsig")
    path, body, headers = stripe_request("evt_bad", "invoice.payment_failed", sub, NOW)
    refused(await api.post(path, content=body + b" ", headers=headers), 400, "bad_signature")
    assert not await workflow_exists(dunning, sub)
    assert nothing_written(store)


# --- bodies ----------------------------------------------------------------------------
async def test_body_over_one_mib_is_413_by_header_and_by_the_bytes_read(offline, store):
    big = b"{" + b" " * MIB + b"}"
    for path in ("/webhooks/stripe", "/webhooks/fake", "/webhooks/braintree"):
        refused(await offline.post(path, content=big, headers={"Stripe-Signature": "t=1,v1=0"}), 413, "body_too_large")

    async def chunks():  # no Content-Length: the limit holds on what is actually read
        for _ in range(17):
            yield b"x" * 65536

    response = await offline.post("/webhooks/fake", content=chunks(), headers={"X-Dunning-Signature": "t=1,v1=0"})
    refused(response, 413, "body_too_large")
    lying = await offline.post("/webhooks/stripe", content=b"{}", headers={"Content-Length": "99999999999"})
    assert lying.status_code in (400, 413)
    assert nothing_written(store)


async def test_malformed_json_and_form_bodies_are_400(offline, store):
    body = b'{"id": "evt_1", "type": '
    headers = {"Stripe-Signature": stripe_header(body)}
    assert "not JSON" in refused(await offline.post("/webhooks/stripe", content=body, headers=headers), 400, "malformed_body")

    fake_body = json.dumps({"id": "e", "type": "payment_failed", "created": "yesterday"}).encode()
    from dunning.providers.fake import sign_fake

    sig = {"X-Dunning-Signature": sign_fake(fake_body, FAKE_SECRET, int(time.time()))}
    assert "created" in refused(await offline.post("/webhooks/fake", content=fake_body, headers=sig), 400, "malformed_body")

    json_to_braintree = await offline.post("/webhooks/braintree", json={"bt_signature": "a", "bt_payload": "b"})
    assert "form" in refused(json_to_braintree, 400, "malformed_body")
    not_utf8 = await offline.post("/webhooks/braintree", content=b"bt_signature=\xff\xfe",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    refused(not_utf8, 400, "malformed_body")
    assert nothing_written(store)


async def test_an_id_longer_than_the_store_takes_is_refused(offline, store):
    request = stripe_request("evt_" + "x" * 300, "invoice.payment_failed", "sub_1", NOW)
    assert "event_id" in refused(await post(offline, request), 400, "malformed_body")
    assert nothing_written(store)


# --- verified, but nothing to do -------------------------------------------------------
async def test_unhandled_type_and_no_subscription_are_recorded_as_ignored(offline, store):
    body = stripe_event("evt_charge", "charge.succeeded", {"id": "ch_1", "object": "charge"}, NOW)
    response = await offline.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_header(body)})
    assert response.json() == {"status": "ignored", "reason": "unhandled_type"}

    manual = stripe_invoice("sub_x", "cus_x", "x@example.com", subscription=None, billing_reason="manual")
    body = stripe_event("evt_manual", "invoice.payment_failed", manual, NOW)
    response = await offline.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_header(body)})
    assert response.json() == {"status": "ignored", "reason": "no_subscription"}
    again = await offline.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_header(body)})
    assert again.json() == {"status": "ignored", "reason": "no_subscription"}

    assert count(store, subscriptions) == 0 and count(store, inbox) == 2
    assert store.inbox_get("stripe", "evt_manual").status == "ignored"
    assert store.inbox_get("stripe", "evt_manual").reason == "no_subscription"
    assert store.get_customer("cus_x") is None  # an ignored event leaves no personal data


async def test_stale_and_no_change_events_need_no_temporal(offline, store):
    """A verified event that decides 'none' is processed without reaching Temporal."""
    response = await post(offline, stripe_request("evt_paid", "invoice.paid", "sub_1", NOW))
    assert response.json() == {"status": "processed", "action": "none", "result": "nothing"}
    response = await post(offline, stripe_request("evt_old", "invoice.payment_failed", "sub_1", NOW - timedelta(days=30)))
    assert response.json() == {"status": "processed", "action": "stale", "result": "nothing"}
    assert store.get_subscription("sub_1").status == "active"
    assert store.inbox_get("stripe", "evt_old").status == "dispatched"


async def test_counters_count_by_provider_outcome_and_reason(offline):
    path, body, headers = stripe_request("evt_1", "invoice.payment_failed", "sub_1", NOW)
    await offline.post(path, content=body + b"x", headers=headers)
    await offline.post(path, content=body + b"y", headers=headers)
    await offline.post(path, content=body)
    ignored = stripe_event("evt_c", "customer.created", {"id": "cus_1", "object": "customer"}, NOW)
    await offline.post(path, content=ignored, headers={"Stripe-Signature": stripe_header(ignored)})
    await offline.post("/webhooks/fake", content=b"{}")

    counts = {(c["provider"], c["outcome"], c["reason"]): c["count"] for c in (await offline.get("/metrics.json")).json()["dunning.webhooks"]}
    assert counts == {
        ("stripe", "rejected", "bad_signature"): 2,
        ("stripe", "rejected", "missing_signature"): 1,
        ("stripe", "ignored", "unhandled_type"): 1,
        ("fake", "rejected", "missing_signature"): 1,
    }
    assert offline.app.state.webhook_counter.count(outcome="rejected") == 4


@pytest.mark.parametrize(
    ("path", "blank", "named"),
    [
        ("/webhooks/stripe", {"stripe_webhook_secret": []}, "DUNNING_STRIPE_WEBHOOK_SECRET"),
        ("/webhooks/fake", {"fake_webhook_secret": None}, "DUNNING_FAKE_WEBHOOK_SECRET"),
        ("/webhooks/braintree", {"braintree_private_key": None}, "DUNNING_BRAINTREE_PRIVATE_KEY"),
    ],
)
async def test_a_provider_without_settings_is_disabled_404_naming_the_env_var(settings, store, path, blank, named):
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    async with api_client(api_settings(settings, **blank), store, factory) as client:
        message = refused(await client.post(path, content=b"{}"), 404, "provider_disabled")
    assert named in message and "disabled" in message
    assert nothing_written(store)


# --- payment service ---------------------------------------------------------------------
async def test_payment_recovered_auth_and_idempotence(tenv, api, dunning, settings, store, subs):
    sub = subs("sub_auth")
    url = f"/v1/subscriptions/{sub}/payment-recovered"
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}

    assert refused(await api.post(url), 401, "unauthorized")
    assert (await api.post(url)).headers["WWW-Authenticate"] == "Bearer"
    refused(await api.post(url, headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    refused(await api.post(url, headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
    assert sub in refused(await api.post(url, headers=bearer), 404, "unknown_subscription")
    refused(await api.get(f"/v1/subscriptions/{sub}/campaign", headers=bearer), 404, "unknown_subscription")

    await dunning.start_campaign(sub, "cus_auth", "auth@example.com", await tenv.get_current_time())
    refused(await api.post(url, headers=bearer, content=b"{nope"), 400, "malformed_body")
    refused(await api.post(url, headers=bearer, json={"reason": 5}), 400, "malformed_body")
    message = refused(await api.post(url, headers=bearer, json={"reason": "from ada@example.com"}), 400, "unknown_reason")
    assert "paid_out_of_band" in message and "ada@example.com" not in message  # the codes, never the text
    refused(await api.post(url, headers={**bearer, "Idempotency-Key": "x" * 256}), 400, "bad_request")
    keyed = {**bearer, "Idempotency-Key": "pay_123"}
    first = await api.post(url, headers=keyed, json={"reason": "paid_out_of_band"})
    assert first.status_code == 200
    assert {k: first.json()[k] for k in ("status", "outcome", "subscription_id")} == {
        "status": "recovered", "outcome": "recovered", "subscription_id": sub,
    }  # fmt: skip
    state = await dunning.client.get_workflow_handle(f"dunning-{sub}").result()
    # the reason is the code, or (when an effect's claim saw the projection's payment before
    # the Update arrived) the effect's own words: either way recovered, by this payment
    assert state["outcome"] == "recovered"
    assert state["reason"] in ("paid_out_of_band", "superseded: subscription is active"), state["reason"]
    repeat = await api.post(url, headers=keyed, json={"reason": "paid_out_of_band"})
    assert repeat.status_code == 200  # the same request again: the same answer, nothing new
    assert {k: repeat.json()[k] for k in ("status", "outcome")} == {"status": "recovered", "outcome": "recovered"}
    assert repeat.json()["duplicate"] is True
    second = await api.post(url, headers=bearer)  # a new request after the end: the truth
    assert second.status_code == 200
    assert {k: second.json()[k] for k in ("status", "outcome")} == {"status": "already_ended", "outcome": "recovered"}
    assert len([e for e in store.events(sub) if e.type == "dunning.recovered"]) == 1

    campaign = await api.get(f"/v1/subscriptions/{sub}/campaign", headers=bearer)
    body = campaign.json()
    assert (body["subscription_id"], body["outcome"], body["stage"]) == (sub, "recovered", "recovered")
    assert {"steps_sent", "next_step"} <= set(body)
    refused(await api.get(f"/v1/subscriptions/{sub}/campaign"), 401, "unauthorized")

    async def factory():
        return dunning

    async with api_client(api_settings(settings, api_token=None), store, factory) as no_token:
        assert "DUNNING_API_TOKEN" in refused(await no_token.post(url, headers=bearer), 404, "api_disabled")


# --- health ----------------------------------------------------------------------------
async def test_healthz_and_readyz(api, settings, store):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok", "temporal": "ok"}

    async def down() -> DunningClient:
        raise ConnectionRefusedError("connection refused")

    async with api_client(api_settings(settings), store, down) as client:
        assert (await client.get("/healthz")).status_code == 200  # up while Temporal is down
        body = (await client.get("/readyz")).json()
        assert body["status"] == "not_ready" and body["message"] == "temporal is unreachable"
        assert body["database"] == "ok" and body["temporal"].startswith("unreachable")

    broken = Store("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=1")
    async with api_client(api_settings(settings), broken, down) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["message"] == "database and temporal are unreachable"
    broken.dispose()


async def test_database_down_is_503_and_campaign_disabled_starts_nothing(settings, store):
    broken = Store("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=1")
    recorder = RecordingClient(settings)

    async def factory():
        return recorder

    async with api_client(api_settings(settings), broken, factory) as client:
        response = await post(client, fake_request("payment_failed", "sub_db", NOW))
        refused(response, 503, "database_unavailable")
        assert response.headers["Retry-After"]
    broken.dispose()

    off = api_settings(settings, campaign=settings.campaign.model_copy(update={"enabled": False}))
    recorder = RecordingClient(off)

    async def disabled_factory():
        return recorder

    async with api_client(off, store, disabled_factory) as client:
        response = await post(client, fake_request("payment_failed", "sub_off", NOW, customer_id="cus_off"))
    assert response.json() == {"status": "processed", "action": "start", "result": "campaign_disabled"}
    assert recorder.calls == []
    assert store.get_subscription("sub_off").status == "past_due"  # tracked, not dunned
