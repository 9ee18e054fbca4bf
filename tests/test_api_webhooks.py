"""Webhooks in, campaigns and emails out: the API in process (ASGI transport) against the
time-skipping server with a worker running, emails received by the SMTP sink. Every test
runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import braintree
import httpx

from starter.api import create_app, redispatch_pending
from starter.client import DunningClient
from tests.api_helpers import api, api_client, api_settings, eventually, post, subs, uid, workflow_exists  # noqa: F401
from tests.webhook_payloads import braintree_request, fake_request, stripe_request
from workflows.campaign import DunningCampaign, workflow_id

MINUTE = timedelta(minutes=1)


def ledger(store, sub):
    return [e.type for e in store.events(sub)]


async def result(dunning: DunningClient, sub: str):
    return await dunning.client.get_workflow_handle_for(DunningCampaign.run, workflow_id(sub)).result()


async def test_stripe_payment_failed_starts_a_campaign_and_invoice_paid_recovers_it(tenv, api, dunning, store, mailbox, subs):
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_stripe_1")

    response = await post(api, stripe_request("evt_fail_1", "invoice.payment_failed", sub, failed_at,
                                              customer="cus_s1", email="ada@example.com"))  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "processed", "action": "start", "result": "started"}
    (first,) = await eventually(mailbox.messages)
    assert (first["To"], first["X-Dunning-Step"], first["X-Dunning-Subscription"]) == ("ada@example.com", "first_notice", sub)

    projection = store.get_subscription(sub)
    assert (projection.status, projection.dunning_campaign_started_at) == ("past_due", failed_at)
    assert (projection.customer_id, projection.provider, projection.decline_class) == ("cus_s1", "stripe", "soft")
    assert store.get_customer("cus_s1").email == "ada@example.com"
    assert store.inbox_get("stripe", "evt_fail_1").status == "dispatched"
    running = await status_when(dunning, sub, lambda s: s.steps_sent == ["first_notice"])
    assert running.campaign_started_at == failed_at and running.outcome == "running"

    paid = await post(api, stripe_request("evt_paid_1", "invoice.paid", sub, failed_at + MINUTE, customer="cus_s1"))
    assert paid.json() == {"status": "processed", "action": "recover", "result": "recovered"}  # the campaign's own answer
    state = await result(dunning, sub)
    assert state.outcome == "recovered" and "invoice.paid" in state.reason
    assert mailbox.steps() == ["first_notice"]
    assert ledger(store, sub) == ["dunning.campaign_started", "dunning.step_sent", "dunning.recovered"]
    projection = store.get_subscription(sub)
    assert (projection.status, projection.dunning_campaign_started_at) == ("active", None)
    assert projection.last_event_at == failed_at + MINUTE

    again = await post(api, stripe_request("evt_paid_1", "invoice.paid", sub, failed_at + MINUTE, customer="cus_s1"))
    assert again.json() == {"status": "duplicate"}


async def test_five_concurrent_deliveries_make_one_campaign_and_one_email_per_step(tenv, api, dunning, store, mailbox, subs):
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_dup")
    request = stripe_request(uid("evt_dup"), "invoice.payment_failed", sub, failed_at, customer="cus_dup")

    responses = await asyncio.gather(*(post(api, request) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert {r.json()["status"] for r in responses} <= {"processed", "duplicate"}
    assert {r.json().get("action") for r in responses} <= {"start", None}

    await eventually(mailbox.messages)
    await status_when(dunning, sub, idle_after("first_notice"))
    await tenv.sleep(timedelta(days=6))  # past the reminder (day 5)
    await eventually(lambda: len(mailbox.messages()) >= 2)
    await post(api, stripe_request(uid("evt_paid"), "invoice.paid", sub, failed_at + timedelta(days=6)))
    state = await result(dunning, sub)
    assert state.outcome == "recovered" and state.steps_sent == ["first_notice", "reminder"]
    assert mailbox.steps() == ["first_notice", "reminder"]
    assert ledger(store, sub).count("dunning.campaign_started") == 1
    assert ledger(store, sub).count("dunning.step_sent") == 2
    assert store.inbox_get("stripe", request_id(request)).status == "dispatched"


async def test_paid_before_an_earlier_failure_sends_nothing_and_starts_nothing(tenv, api, dunning, store, mailbox, subs):
    now = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_order")
    paid = await post(api, stripe_request("evt_o_paid", "invoice.paid", sub, now))
    failed = await post(api, stripe_request("evt_o_fail", "invoice.payment_failed", sub, now - MINUTE))

    assert paid.json() == {"status": "processed", "action": "none", "result": "nothing"}
    assert failed.json() == {"status": "processed", "action": "stale", "result": "nothing"}
    assert not await workflow_exists(dunning, sub)
    projection = store.get_subscription(sub)
    assert (projection.status, projection.dunning_campaign_started_at, projection.last_event_at) == ("active", None, now)
    await asyncio.sleep(0.2)
    assert mailbox.messages() == [] and store.events(sub) == []


async def test_temporal_down_answers_503_and_the_event_is_dispatched_when_it_is_back(
    tenv, settings, store, dunning, mailbox
, subs):
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_outage")

    async def temporal_down() -> DunningClient:
        raise RuntimeError("Failed client connect: connection refused")

    async with api_client(api_settings(settings), store, temporal_down, clock=tenv.get_current_time) as down:
        response = await post(down, stripe_request("evt_outage", "invoice.payment_failed", sub, failed_at,
                                                   customer="cus_out", email="out@example.com"))  # fmt: skip
        assert response.status_code == 503
        assert response.json()["error"] == "temporal_unavailable" and "Temporal" in response.json()["message"]
        assert (await down.get("/readyz")).status_code == 503

    row = store.inbox_get("stripe", "evt_outage")
    assert row.status == "received" and row.payload["decision"]["action"] == "start"
    assert "out@example.com" not in str(row.payload)  # personal data only in the customers table
    assert store.get_subscription(sub).status == "past_due"  # the projection is not lost either
    assert not await workflow_exists(dunning, sub) and mailbox.messages() == []

    assert await redispatch_pending(store, dunning) == 1
    (email,) = await eventually(mailbox.messages)
    assert (email["To"], email["X-Dunning-Step"]) == ("out@example.com", "first_notice")
    assert store.inbox_get("stripe", "evt_outage").status == "dispatched"
    assert (await dunning.status(sub)).campaign_started_at == failed_at
    assert await redispatch_pending(store, dunning) == 0


async def test_a_client_on_a_closed_port_is_unavailable_and_the_redelivery_dispatches(
    tenv, settings, store, dunning, mailbox
, subs):
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_port")
    request = fake_request("payment_failed", sub, failed_at, customer_id="cus_port", customer_email="p@example.com")

    async def closed_port() -> DunningClient:
        return DunningClient(await Client.connect("127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter), store, settings)

    async with api_client(api_settings(settings), store, closed_port, clock=tenv.get_current_time) as down:
        assert (await post(down, request)).status_code == 503
    assert store.inbox_get("fake", request_id(request)).status == "received"

    async def up() -> DunningClient:
        return dunning

    async with api_client(api_settings(settings), store, up, clock=tenv.get_current_time) as back:  # the provider redelivers
        response = await post(back, request)
    assert response.json() == {"status": "processed", "action": "start", "result": "started"}
    await eventually(mailbox.messages)
    assert mailbox.steps() == ["first_notice"]


async def status_when(dunning: DunningClient, sub: str, check, timeout: float = 10.0):
    for _ in range(int(timeout / 0.05)):
        state = await dunning.status(sub)
        if check(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"campaign state never matched: {state}")


def idle_after(step: str):
    """The campaign recorded `step` and waits on a timer for the next one."""
    return lambda s: s.steps_sent and s.steps_sent[-1] == step and s.next_step is not None and s.next_step.key != step


def request_id(request) -> str:
    import json

    return json.loads(request[1])["id"]


async def test_braintree_charged_unsuccessfully_starts_a_campaign(tenv, api, dunning, store, mailbox, subs):
    at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_bt_api")
    request = braintree_request(braintree.WebhookNotification.Kind.SubscriptionChargedUnsuccessfully, sub, at,
                                customer="cus_bt_api", email="grace@example.com")  # fmt: skip

    response = await post(api, request)
    assert response.json() == {"status": "processed", "action": "start", "result": "started"}
    (email,) = await eventually(mailbox.messages)
    assert (email["To"], email["X-Dunning-Step"]) == ("grace@example.com", "first_notice")
    projection = store.get_subscription(sub)
    assert (projection.status, projection.provider, projection.dunning_campaign_started_at) == ("past_due", "braintree", at)
    state = await dunning.status(sub)
    assert state.outcome == "running" and state.customer_id == "cus_bt_api"

    charged = braintree_request(braintree.WebhookNotification.Kind.SubscriptionChargedSuccessfully, sub, at + MINUTE)
    assert (await post(api, charged)).json()["action"] == "recover"
    assert (await result(dunning, sub)).outcome == "recovered"


async def test_fake_provider_flow_failure_retry_info_and_success(tenv, api, dunning, store, mailbox, subs):
    at = await tenv.get_current_time()
    sub = subs("sub_fake_api")
    failed = await post(api, fake_request("payment_failed", sub, at, customer_id="cus_f", customer_email="f@example.com",
                                          decline_code="insufficient_funds", attempt_count=1))  # fmt: skip
    assert failed.json()["action"] == "start"
    await eventually(mailbox.messages)

    again = await post(api, fake_request("payment_failed", sub, at + MINUTE, customer_id="cus_f",
                                         decline_code="insufficient_funds", attempt_count=2))  # fmt: skip
    assert again.json() == {"status": "processed", "action": "update", "result": "updated"}
    state = await status_when(dunning, sub, lambda s: s.provider_attempts == 2)
    assert (state.last_event, state.decline_class, state.campaign_started_at) == ("payment_failed", "soft", at)
    projection = store.get_subscription(sub)
    assert (projection.dunning_campaign_started_at, projection.last_event_at) == (at, at + MINUTE)  # anchor kept

    ok = await post(api, fake_request("payment_succeeded", sub, at + 2 * MINUTE))
    assert ok.json()["action"] == "recover"
    assert (await result(dunning, sub)).outcome == "recovered"
    assert mailbox.steps() == ["first_notice"]


async def test_invoice_voided_mid_campaign_resolves_it_and_nothing_more_is_sent(tenv, api, dunning, store, mailbox, subs):
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_void")
    await post(api, stripe_request("evt_v_fail", "invoice.payment_failed", sub, failed_at, customer="cus_v"))
    await eventually(mailbox.messages)
    await status_when(dunning, sub, idle_after("first_notice"))
    await tenv.sleep(timedelta(days=2))

    voided = await post(api, stripe_request("evt_v_void", "invoice.voided", sub, failed_at + timedelta(days=2)))
    assert voided.json() == {"status": "processed", "action": "resolve", "result": "signalled"}
    state = await result(dunning, sub)
    assert state.outcome == "resolved" and "invoice.voided" in state.reason
    assert mailbox.steps() == ["first_notice"]
    assert ledger(store, sub) == ["dunning.campaign_started", "dunning.step_sent", "dunning.resolved"]
    projection = store.get_subscription(sub)
    assert (projection.status, projection.dunning_campaign_started_at) == ("active", None)


async def test_the_background_sweep_dispatches_what_a_503_left_behind(tenv, settings, store, dunning, mailbox, subs):
    """Temporal down at delivery; no redelivery comes; the app's own sweep starts the campaign."""
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_sweep")
    temporal_up = False

    async def factory() -> DunningClient:
        if not temporal_up:
            raise ConnectionRefusedError("connection refused")
        return dunning

    app = create_app(api_settings(settings), store, factory, sweep_interval=0.05, sweep_min_age=0,
                     clock=tenv.get_current_time)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dunning.test") as client:
            request = fake_request("payment_failed", sub, failed_at, customer_id="cus_sw", customer_email="sw@example.com")
            assert (await post(client, request)).status_code == 503
            await asyncio.sleep(0.2)  # sweeps while Temporal is down: nothing is lost, nothing sent
            assert store.inbox_get("fake", request_id(request)).status == "received"
            temporal_up = True
            await eventually(lambda: store.inbox_get("fake", request_id(request)).status == "dispatched")
    (email,) = await eventually(mailbox.messages)
    assert (email["To"], email["X-Dunning-Step"]) == ("sw@example.com", "first_notice")


async def test_recover_then_fail_again_while_temporal_was_down_makes_a_second_campaign(
    tenv, api, settings, store, dunning, mailbox, subs
):
    """Both events wait in the inbox; re-dispatch ends the old campaign, then starts the new
    one at its own anchor (never folded into the old run by USE_EXISTING)."""
    first_at = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_again")
    await post(api, stripe_request("evt_a1", "invoice.payment_failed", sub, first_at, customer="cus_a"))
    await eventually(mailbox.messages)
    await status_when(dunning, sub, idle_after("first_notice"))
    await tenv.sleep(timedelta(hours=3))  # the events below are in the past

    async def temporal_down() -> DunningClient:
        raise ConnectionRefusedError("connection refused")

    second_at = first_at + timedelta(hours=2)
    async with api_client(api_settings(settings), store, temporal_down, clock=tenv.get_current_time) as down:
        paid = await post(down, stripe_request("evt_a2", "invoice.paid", sub, first_at + timedelta(hours=1)))
        failed = await post(down, stripe_request("evt_a3", "invoice.payment_failed", sub, second_at, customer="cus_a"))
    assert (paid.status_code, failed.status_code) == (503, 503)
    assert store.get_subscription(sub).dunning_campaign_started_at == second_at

    dispatched = 0
    for _ in range(100):
        dispatched += await redispatch_pending(store, dunning)
        if dispatched == 2:
            break
        await asyncio.sleep(0.05)
    assert dispatched == 2
    await eventually(lambda: len(mailbox.messages()) == 2)
    state = await status_when(dunning, sub, lambda s: s.steps_sent == ["first_notice"])
    assert state.campaign_started_at == second_at and state.outcome == "running"
    assert len({m["Message-ID"] for m in mailbox.messages()}) == 2
    assert [e.type for e in store.events(sub, first_at)][-1] == "dunning.recovered"
