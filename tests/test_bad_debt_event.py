"""A `bad_debt_paid` event (the provider collected a bad debt itself) leaves bad debt by
the bad-debt path, not collection's: `bad_debt.exited` with amount and reason, the
entitlement restored, the outbound event, no charge, once per event; on both databases.
For a subscription not in bad debt it is an ordinary payment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest_asyncio

from dunning.config import Settings, load_settings
from dunning.store.store import Store
from tests.api_helpers import api_client, api_settings, post
from tests.test_pay_bad_debt import EXHAUSTED_AT, SUB, _charges, _enter_bad_debt, _ledger, _outbox
from tests.webhook_payloads import fake_request


class SettingsOnly:
    """The receive path asks its client for settings; this path must reach nothing else."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


@pytest_asyncio.fixture
async def api(tmp_path: Path, db_url: str, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    settings = api_settings(load_settings(home=tmp_path, database_url=db_url))

    async def factory():
        return SettingsOnly(settings)

    async def clock():  # event times are bounded against the API's clock
        return EXHAUSTED_AT + timedelta(days=3)

    async with api_client(settings, store, factory, clock=clock) as client:
        yield client


async def test_a_bad_debt_paid_event_exits_bad_debt_once(api: httpx.AsyncClient, store: Store) -> None:
    _enter_bad_debt(store)
    at = EXHAUSTED_AT + timedelta(days=2)
    request = fake_request("bad_debt_paid", SUB, at, id="evt_bd_paid", amount_due=4200, invoice_id="in_bd")
    first = await post(api, request)
    assert first.status_code == 200, first.text
    again = await post(api, request)  # a redelivery
    assert again.status_code == 200
    assert _ledger(store).count("bad_debt.exited") == 1
    exited = next(e for e in store.events(SUB) if e.type == "bad_debt.exited")
    assert exited.data["how"] == "paid" and exited.data["amount"] == 4200 and exited.data["reference"] == "in_bd"
    assert exited.data["reason"] == "paid_out_of_band" and exited.data["days_in_bad_debt"] == 2.0
    sub = store.get_subscription(SUB)
    assert sub is not None and (sub.status, sub.entitlement) == ("active", "full")
    assert [t for t, _ in _outbox(store)].count("bad_debt_exited") == 1
    assert _charges(store) == []  # nothing charged: the provider already has the money
    row = store.inbox_get("fake", "evt_bd_paid")
    assert row is not None and row.reason == "bad_debt_exited"


def test_not_in_bad_debt_the_event_is_an_ordinary_payment(tmp_path: Path, db_url: str, store: Store) -> None:
    from dunning.contracts import BillingEvent, EventKind
    from starter.bad_debt import paid_event

    settings = load_settings(home=tmp_path, database_url=db_url)
    event = BillingEvent(provider="fake", event_id="evt_x", event_type="bad_debt_paid", kind=EventKind.bad_debt_paid,
                         occurred_at=EXHAUSTED_AT, subscription_id=SUB, customer_id="cus_bd")  # fmt: skip
    assert paid_event(settings, store, event) is None  # unknown subscription
    _enter_bad_debt(store)
    late = event.model_copy(update={"event_id": "evt_y"})
    assert paid_event(settings, store, late) == "bad_debt_exited"
    assert paid_event(settings, store, late.model_copy(update={"event_id": "evt_z"})) is None  # left already
    assert _ledger(store).count("bad_debt.exited") == 1
