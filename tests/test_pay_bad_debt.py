"""The guarded pay-bad-debt path (starter.bad_debt, dunning/store/bad_debt.py), on SQLite
and PostgreSQL, with the fake provider: over HTTP (the app in process, no Temporal), the
CLI, and the function itself where a clock or a provider failure is needed.

A subscription enters bad debt the real way: a billing event makes it past_due, and its
campaign's end (`finish_campaign`, exhausted) writes `bad_debt.entered`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from typer.testing import CliRunner

from dunning.config import Settings, load_settings
from dunning.contracts import BillingEvent, CampaignEnd, EventKind
from dunning.projection import decide
from dunning.providers import fake_state
from dunning.providers.actions import ChargeResult, ProviderError
from dunning.store import bad_debt
from dunning.store.campaign_writes import finish_campaign
from dunning.store.schema import outbound_events
from dunning.store.store import Store
from starter.bad_debt import pay_bad_debt, provider_key
from starter.cli import app as cli_app
from tests.api_helpers import api_client, api_settings
from tests.webhook_payloads import API_TOKEN

SUB, CUS = "sub_bd", "cus_bd"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
EXHAUSTED_AT = T0 + timedelta(days=14)
DAY = 86400.0
PATH = f"/v1/subscriptions/{SUB}/pay-bad-debt"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _apply(store: Store, kind: EventKind, at: datetime, event_id: str) -> None:
    types = {EventKind.payment_failed: "payment.failed", EventKind.payment_succeeded: "payment.succeeded"}
    store.apply_projection(
        BillingEvent(
            provider="fake", event_id=event_id, event_type=types[kind], kind=kind, occurred_at=at,
            subscription_id=SUB, customer_id=CUS,
        ),
        decide,
    )  # fmt: skip


def _enter_bad_debt(store: Store, on_exhaustion: str = "cancel") -> None:
    """sub_bd fails to pay at T0; its campaign is exhausted 14 days later: in bad debt."""
    _apply(store, EventKind.payment_failed, T0, "evt_fail_1")
    end = CampaignEnd(
        subscription_id=SUB, customer_id=CUS, campaign_started_at=T0, outcome="exhausted", reason="grace period over",
        at=EXHAUSTED_AT, on_exhaustion=on_exhaustion, decline_class="soft", plan_id="plan_pro",  # type: ignore[arg-type]
    )  # fmt: skip
    finish_campaign(store, end, DAY)
    sub = store.get_subscription(SUB)
    assert sub is not None and sub.entitlement == "canceled" and sub.status in ("canceled", "unpaid")


def _ledger(store: Store) -> list[str]:
    return [e.type for e in store.events(SUB)]


def _outbox(store: Store) -> list[tuple[str, dict]]:
    o = outbound_events.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(o.type, o.payload).where(o.subscription_id == SUB).order_by(o.id)).all()
    return [(r.type, r.payload) for r in rows]


def _charges(store: Store) -> list[fake_state.FakeCall]:
    return [c for c in fake_state.calls(store.engine, SUB) if c.action == "charge"]


@pytest.fixture
def bd_settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(load_settings(home=tmp_path, database_url=db_url))


@pytest_asyncio.fixture
async def api(bd_settings: Settings, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async def no_temporal():  # pay-bad-debt never reaches Temporal
        raise AssertionError("pay-bad-debt must not call Temporal")

    async with api_client(bd_settings, store, no_temporal) as client:
        yield client


async def _pay(api: httpx.AsyncClient, key: str | None, body: dict | None = None, path: str = PATH) -> httpx.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key is not None else {})}
    return await api.post(path, json=body, headers=headers) if body else await api.post(path, headers=headers)


# --- refusals --------------------------------------------------------------------------
async def test_refused_when_not_in_bad_debt_and_changes_nothing(api, store):
    """Never in bad debt (an active subscription), in dunning but not exhausted, unknown:
    each refused naming the problem; no charge, no ledger row."""
    unknown = await _pay(api, "k1", path="/v1/subscriptions/sub_nobody/pay-bad-debt")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_subscription"

    _apply(store, EventKind.payment_failed, T0, "evt_fail_1")
    _apply(store, EventKind.payment_succeeded, T0 + timedelta(days=1), "evt_paid_1")  # healthy again
    before = (store.get_subscription(SUB), _ledger(store))
    r = await _pay(api, "k1")
    assert r.status_code == 409
    assert r.json()["error"] == "not_in_bad_debt"
    assert "not in bad debt" in r.json()["message"]
    assert (store.get_subscription(SUB), _ledger(store)) == before
    assert _charges(store) == [] and _outbox(store) == []


async def test_refused_while_a_campaign_runs(api, store):
    """In bad debt, then a new failure starts a campaign: the campaign owns collection."""
    _enter_bad_debt(store, on_exhaustion="mark_unpaid")
    _apply(store, EventKind.payment_failed, EXHAUSTED_AT + timedelta(days=1), "evt_fail_2")
    assert store.get_subscription(SUB).status == "past_due"
    ledger = _ledger(store)
    r = await _pay(api, "k1")
    assert (r.status_code, r.json()["error"]) == (409, "campaign_running")
    assert _ledger(store) == ledger and _charges(store) == []


async def test_bad_requests(api, store):
    _enter_bad_debt(store)
    missing = await _pay(api, None)
    assert (missing.status_code, missing.json()["error"]) == (400, "missing_idempotency_key")
    unknown_reason = await _pay(api, "k1", {"reason": "because ada@example.com said so"})
    assert (unknown_reason.status_code, unknown_reason.json()["error"]) == (400, "unknown_reason")
    assert "ada@" not in unknown_reason.text
    no_token = await api.post(PATH, headers={"Idempotency-Key": "k1"})
    assert no_token.status_code == 401
    assert _charges(store) == [] and "bad_debt.payment_claimed" not in _ledger(store)


async def test_refused_while_a_payment_is_in_flight(api, store, bd_settings):
    """An attempt claimed (its charge not answered yet) within 30 minutes: every other
    attempt, and a repeat of its own key, is refused without a charge. Past the window,
    the same key takes over (the same provider key: the provider dedupes)."""
    _enter_bad_debt(store)
    fake_state.set_card(store.engine, SUB, "succeed")
    now = datetime.now(UTC)
    bad_debt.claim(store, SUB, "k-first", "payment_succeeded", now)  # charging, no answer yet
    ledger = _ledger(store)

    for key in ("k-second", "k-first"):
        r = await _pay(api, key)
        assert (r.status_code, r.json()["error"]) == (409, "payment_in_flight"), key
        assert "in flight until" in r.json()["message"]
    assert _ledger(store) == ledger and _charges(store) == []

    later = now + bad_debt.WINDOW + timedelta(minutes=1)  # the first attempt is certainly dead
    answer = pay_bad_debt(bd_settings, store, SUB, "k-first", now=later)
    assert answer.status == 200 and answer.body["status"] == "paid"
    assert [c.idempotency_key for c in _charges(store)] == [provider_key(SUB, "k-first")]
    assert _ledger(store).count("bad_debt.exited") == 1


async def test_provider_unreachable_keeps_the_attempt_in_flight(store, bd_settings):
    _enter_bad_debt(store)

    class Down:
        name = "fake"

        def retry_charge(self, *_args: object) -> ChargeResult:
            raise ProviderError("fake: charge timed out", retryable=True, provider="fake")

    now = datetime.now(UTC)
    r = pay_bad_debt(bd_settings, store, SUB, "k1", now=now, provider=Down())  # type: ignore[arg-type]
    assert (r.status, r.body["error"]) == (503, "provider_unavailable")
    other = pay_bad_debt(bd_settings, store, SUB, "k2", now=now + timedelta(minutes=5))
    assert (other.status, other.body["error"]) == (409, "payment_in_flight")
    assert "bad_debt.exited" not in _ledger(store) and _charges(store) == []


# --- idempotency and success -----------------------------------------------------------
async def test_same_key_twice_same_answer_one_charge(api, store):
    _enter_bad_debt(store)
    fake_state.set_card(store.engine, SUB, "succeed")
    first = await _pay(api, "k-once", {"reason": "card_updated"})
    again = await _pay(api, "k-once", {"reason": "card_updated"})
    assert first.status_code == again.status_code == 200
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert {**first.json(), "duplicate": True} == again.json()
    calls = _charges(store)
    assert [c.idempotency_key for c in calls] == [provider_key(SUB, "k-once")]
    assert _ledger(store).count("bad_debt.exited") == 1 and len(_outbox(store)) == 1


async def test_success_leaves_bad_debt_once(api, store):
    """One transaction: bad_debt.exited (how long, reason, how it left), entitlement full,
    status active, the outbound event; a different key afterwards is not in bad debt."""
    _enter_bad_debt(store)
    fake_state.set_card(store.engine, SUB, "succeed")
    r = await _pay(api, "k-pay", {"reason": "card_updated"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "paid" and body["how"] == "paid" and body["reason"] == "card_updated"
    assert body["entitlement"] == "full" and body["duplicate"] is False
    assert 5.9 < body["days_in_bad_debt"] < 6.1  # exhausted 6 days ago

    exited = [e for e in store.events(SUB) if e.type == "bad_debt.exited"]
    assert len(exited) == 1
    data = exited[0].data
    assert exited[0].campaign_started_at == T0  # the bad debt it leaves
    assert (data["how"], data["reason"], data["plan_id"], data["decline_class"]) == (
        "paid", "card_updated", "plan_pro", "soft"
    )
    stayed = (datetime.fromisoformat(body["exited_at"]) - EXHAUSTED_AT).total_seconds()  # T0 is set at import
    assert abs(data["seconds_in_bad_debt"] - stayed) < 2 and data["amount"] is None
    sub = store.get_subscription(SUB)
    assert (sub.status, sub.entitlement, sub.dunning_campaign_started_at) == ("active", "full", None)
    [(kind, payload)] = _outbox(store)
    assert kind == "bad_debt_exited" and payload["data"]["how"] == "paid"

    after = await _pay(api, "k-other")
    assert (after.status_code, after.json()["error"]) == (409, "not_in_bad_debt")
    assert len(_charges(store)) == 1

    metrics = (await api.get("/metrics.json")).json()
    assert (metrics["dunning.bad_debt.entered"], metrics["dunning.bad_debt.exited"]) == (1, 1)


async def test_declined_charge_stays_in_bad_debt(api, store):
    _enter_bad_debt(store)
    fake_state.set_card(store.engine, SUB, "decline:insufficient_funds")
    r = await _pay(api, "k-decl")
    assert r.status_code == 402
    body = r.json()
    assert (body["error"], body["decline_class"], body["decline_code"]) == (
        "payment_declined", "soft", "insufficient_funds"
    )
    assert "still in bad debt" in body["message"]
    assert "bad_debt.payment_failed" in _ledger(store) and "bad_debt.exited" not in _ledger(store)
    sub = store.get_subscription(SUB)
    assert (sub.status, sub.entitlement) == ("canceled", "canceled") and _outbox(store) == []

    again = await _pay(api, "k-decl")  # the same answer, no second charge
    assert again.status_code == 402 and again.json() == {**body, "duplicate": True}
    assert len(_charges(store)) == 1

    fake_state.set_card(store.engine, SUB, "succeed")  # a declined attempt is not in flight
    paid = await _pay(api, "k-retry")
    assert paid.status_code == 200 and len(_charges(store)) == 2


def test_cli_pay(store, db_url, tmp_path):
    _enter_bad_debt(store)
    fake_state.set_card(store.engine, SUB, "succeed")
    runner = CliRunner()
    env = {"DUNNING_DATABASE_URL": db_url, "DUNNING_HOME": str(tmp_path)}
    args = ["bad-debt", "pay", SUB, "--idempotency-key", "k-cli"]
    first = runner.invoke(cli_app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "paid" in first.output and "full" in first.output
    again = runner.invoke(cli_app, [*args, "--json"], env=env)
    assert again.exit_code == 0, again.output
    assert '"duplicate": true' in again.output and '"http_status": 200' in again.output
    assert len(_charges(store)) == 1

    refused = runner.invoke(cli_app, ["bad-debt", "pay", SUB, "--idempotency-key", "k-cli-2"], env=env)
    assert refused.exit_code == 1 and "not_in_bad_debt" in refused.output
