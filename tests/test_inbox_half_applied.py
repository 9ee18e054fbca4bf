"""The API dies after the event's one transaction (inbox row, decision, projection) and
before Temporal has it (an injected failure point): the provider gets a 5xx, and
whichever comes first, the API's sweep or the provider's redelivery, completes the event
with a campaign that reaches its customer (the first notice lands at the SMTP sink). The
email lives in the inbox row's own columns, never in the payload that goes to Temporal.
An inbox row can no longer exist without its decision and projection. SQLite and
PostgreSQL."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from dunning.contracts import BillingEvent
from dunning.projection import decide
from dunning.store.schema import inbox
from starter import dispatch
from starter.dispatch import redispatch_pending, stored_event
from tests.api_helpers import api, eventually, post, subs, uid  # noqa: F401
from tests.test_store_inbox import event, receive
from tests.webhook_payloads import stripe_request


@pytest.fixture
def crash_once(monkeypatch):
    """The first dispatch to Temporal raises (after the event's transaction committed)."""
    original = dispatch.send_decision
    crashed: list[str] = []

    async def send_decision(store, client, event, decision, **kw):
        if not crashed:
            crashed.append(event.event_id)
            raise RuntimeError("injected: the process died before Temporal had the event")
        return await original(store, client, event, decision, **kw)

    monkeypatch.setattr(dispatch, "send_decision", send_decision)
    return crashed


async def deliver_and_crash(tenv, api, store, crashed, sub: str, email: str):
    failed_at = (await tenv.get_current_time()).replace(microsecond=0)
    request = stripe_request(uid("evt_half"), "invoice.payment_failed", sub, failed_at, customer=f"cus_{sub}", email=email)
    response = await post(api, request)
    assert response.status_code >= 500, response.text  # the provider will redeliver
    event_id = json.loads(request[1])["id"]
    assert crashed == [event_id]
    row = store.inbox_get("stripe", event_id)
    assert row.status == "received" and row.payload["decision"]["action"] == "start"  # decided, not dispatched
    assert email not in json.dumps(row.payload)  # the payload goes to Temporal: no personal data
    assert store.get_subscription(sub).status == "past_due" and store.get_customer(f"cus_{sub}").email == email
    return request, event_id


async def test_after_a_crash_the_sweep_starts_a_campaign_that_reaches_the_customer(tenv, api, dunning, store, mailbox, subs, crash_once):
    sub = subs("sub_half_sweep")
    request, event_id = await deliver_and_crash(tenv, api, store, crash_once, sub, "half@example.com")

    assert await redispatch_pending(store, dunning) == 1
    (notice,) = await eventually(mailbox.messages)
    assert (notice["To"], notice["X-Dunning-Step"], notice["X-Dunning-Subscription"]) == ("half@example.com", "first_notice", sub)
    assert store.get_customer(f"cus_{sub}").email == "half@example.com"
    assert store.inbox_get("stripe", event_id).status == "dispatched"
    assert (await post(api, request)).json() == {"status": "duplicate"}  # the late redelivery: nothing more to do
    assert mailbox.steps() == ["first_notice"]


async def test_after_a_crash_the_providers_redelivery_completes_the_event(tenv, api, dunning, store, mailbox, subs, crash_once):
    sub = subs("sub_half_redeliver")
    request, event_id = await deliver_and_crash(tenv, api, store, crash_once, sub, "again@example.com")

    response = await post(api, request)
    assert response.json() == {"status": "processed", "action": "start", "result": "started"}
    (notice,) = await eventually(mailbox.messages)
    assert (notice["To"], notice["X-Dunning-Step"]) == ("again@example.com", "first_notice")
    assert store.inbox_get("stripe", event_id).status == "dispatched"
    assert await redispatch_pending(store, dunning) == 0


# --- the store alone --------------------------------------------------------------------
def test_the_inbox_row_keeps_email_and_name_in_its_own_columns(store):
    e = event("evt_1", customer_email="ada@example.com", customer_name="Ada")
    payload = {"event": e.for_workflow().model_dump(mode="json")}
    store.inbox_receive(e.provider, e.event_id, e.event_type, e.subscription_id, e.occurred_at, payload,
                        customer_email=e.customer_email, customer_name=e.customer_name)  # fmt: skip
    with store.engine.connect() as conn:
        row = conn.execute(select(inbox.c.customer_email, inbox.c.customer_name, inbox.c.payload)).one()
    assert (row.customer_email, row.customer_name) == ("ada@example.com", "Ada")
    assert "ada@example.com" not in json.dumps(row.payload) and "Ada" not in json.dumps(row.payload)

    # the sweep's view: the stored event, which has no email; the projection takes it from the row
    stored = stored_event(store.inbox_get("stripe", "evt_1"))
    assert isinstance(stored, BillingEvent) and stored.customer_email is None
    assert store.apply_projection(stored, decide).action == "start"
    assert (store.get_customer("cus_1").email, store.get_customer("cus_1").name) == ("ada@example.com", "Ada")


def test_a_redelivery_fills_a_row_received_without_contact(store):
    receive(store, event("evt_1"))  # e.g. recorded by a version that kept no contact
    again = event("evt_1", customer_email="late@example.com")
    assert store.inbox_receive(again.provider, again.event_id, again.event_type, again.subscription_id, again.occurred_at,
                               {"event": again.for_workflow().model_dump(mode="json")},
                               customer_email="late@example.com") == "received"  # fmt: skip
    store.apply_projection(stored_event(store.inbox_get("stripe", "evt_1")), decide)
    assert store.get_customer("cus_1").email == "late@example.com"
