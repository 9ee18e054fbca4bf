"""Recompute on the time-skipping server, both databases, the fake provider: the stores
are made to disagree behind the engine's back; a dry run shows it and changes nothing;
recompute fixes it once through the receive path; a second recompute finds nothing.

What a user checks: the report, the projection and entitlement the host app reads, the
campaign (Temporal), emails at the SMTP sink, the fake provider's recorded calls, and the
`dunning.drift_detected` ledger rows."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import update

from dunning.contracts import BillingEvent, EventKind
from dunning.providers import fake_account, fake_state
from dunning.rollout import RolloutSettings
from dunning.store.entitlements import entitlement_of
from dunning.store.schema import subscriptions
from dunning.store.store import Store
from starter import recompute
from starter.recompute_view import render
from tests.api_helpers import api  # noqa: F401  (fixture)
from tests.temporal_fixtures import SkippingDunningClient, ledger, running_worker
from tests.webhook_payloads import API_TOKEN

pytestmark = pytest.mark.asyncio
DRIFT = "dunning.drift_detected"


async def _past_due(client, store: Store, sub: str, *, webhook: bool = True):
    """The provider turns `sub` past due with an open invoice; the webhook arrives or not."""
    at = await client.now() - timedelta(minutes=5)
    fake_account.update(store.engine, sub, at, status="past_due", invoice_id=f"in_{sub}", invoice_state="open",
                        amount_due=1500, failed_at=at)  # fmt: skip
    if webhook:
        await client.fail_payment(sub, f"cus_{sub}", "ada@example.com", at, invoice_id=f"in_{sub}")
    return at


async def _active_row(client, store: Store, sub: str) -> None:
    """The engine knows `sub` as active (an earlier paid renewal)."""
    at = await client.now() - timedelta(days=1)
    store.upsert_customer(f"cus_{sub}", "ada@example.com")
    event = BillingEvent(provider="fake", event_id=f"paid:{sub}", event_type="payment_succeeded",
                         kind=EventKind.payment_succeeded, occurred_at=at, subscription_id=sub,
                         customer_id=f"cus_{sub}")  # fmt: skip
    await client.receive(event)
    fake_account.update(store.engine, sub, at, status="active")


async def _end(client: SkippingDunningClient, sub: str) -> None:
    """Leave nothing running on the shared time-skipping server: pay, and wait for the end."""
    await client.payment_recovered(sub, "card_updated", f"end-{sub}")
    assert (await client._handle(sub).result()).outcome == "recovered"


async def test_invoice_paid_without_webhook(dunning: SkippingDunningClient, store: Store, new_sub, mailbox) -> None:
    sub = new_sub("rc_paid")
    anchor = await _past_due(dunning, store, sub)
    fake_account.update(store.engine, sub, await dunning.now(), status="active", invoice_state="paid")

    dry = await recompute.dry_run(store, dunning, sub)
    kinds = [(a.kind, getattr(a, "outcome", None) or getattr(a, "field", None)) for a in dry.plan.actions]
    assert kinds == [("end_campaign", "recovered"), ("repair_projection", "status"),
                     ("repair_projection", "dunning_campaign_started_at")]  # fmt: skip
    assert dry.plan.desired.status == "active" and dry.plan.desired.entitlement == "full"
    assert "provider.invoice_state" in dry.plan.drift
    text = render(dry)
    assert "dry run, nothing changed" in text and "end_campaign" in text and "paid" in text
    row = store.get_subscription(sub)
    assert row is not None and row.status == "past_due" and row.dunning_campaign_started_at == anchor
    assert (await dunning.status(sub)).outcome == "running" and ledger(store, sub, DRIFT) == []

    status, report, _ = await recompute.request(store, dunning, sub, "fix-1")
    assert status == "processed" and report is not None and report.status == "applied"
    assert {a.kind: a.result for a in report.applied}["end_campaign"] == "recovered"
    state = await dunning.status(sub)
    assert state.outcome == "recovered"
    row = store.get_subscription(sub)
    assert row is not None and (row.status, row.dunning_campaign_started_at, row.entitlement) == (
        "active",
        None,
        "full",
    )
    drift = ledger(store, sub, DRIFT)
    assert len(drift) == 1 and drift[0].data["source"] == "support" and "end_campaign" in drift[0].data["actions"]
    assert [c.action for c in fake_state.calls(store.engine, sub)] == []  # recompute never charges

    again = await recompute.dry_run(store, dunning, sub)
    assert again.plan.actions == () and again.plan.deferred is None
    status, report, _ = await recompute.request(store, dunning, sub, "fix-2")
    assert report is not None and report.status == "no_drift" and len(ledger(store, sub, DRIFT)) == 1


async def test_dropped_failure_webhook_starts_the_campaign(
    dunning: SkippingDunningClient, store: Store, new_sub, mailbox
) -> None:
    sub = new_sub("rc_drop")
    await _active_row(dunning, store, sub)
    failed_at = await _past_due(dunning, store, sub, webhook=False)

    dry = await recompute.dry_run(store, dunning, sub)
    assert [(a.kind, getattr(a, "anchor", None)) for a in dry.plan.actions][0] == ("start_campaign", failed_at)
    assert store.get_subscription(sub).status == "active"  # type: ignore[union-attr]

    _, report, _ = await recompute.request(store, dunning, sub, "drop-1")
    assert report is not None and {a.kind: a.result for a in report.applied}["start_campaign"] == "started"
    state = await dunning.status(sub)
    assert state.outcome == "running" and state.campaign_started_at == failed_at
    row = store.get_subscription(sub)
    assert row is not None and (row.status, row.dunning_campaign_started_at) == ("past_due", failed_at)
    assert len(ledger(store, sub, DRIFT)) == 1
    again = await recompute.dry_run(store, dunning, sub)
    assert again.plan.actions == ()
    await _end(dunning, sub)


async def test_wrong_entitlement_is_repaired(dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    sub = new_sub("rc_ent")
    await _active_row(dunning, store, sub)
    with store.engine.begin() as conn:  # someone's manual SQL
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="limited"))

    _, report, _ = await recompute.request(store, dunning, sub, "ent-1")
    assert report is not None and [a.kind for a in report.plan.actions] == ["set_entitlement"]
    assert report.plan.drift == ("projection.entitlement", "provider.invoice_state", "provider.status")
    found = entitlement_of(store, sub, "m")
    assert found is not None and found.entitlement == "full"
    assert ledger(store, sub, DRIFT)[0].data["drift"] == list(report.plan.drift)


async def test_a_payment_in_flight_defers_everything(dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    sub = new_sub("rc_flight")
    await _past_due(dunning, store, sub)
    now = await dunning.now()
    fake_account.update(store.engine, sub, now, invoice_state="paid", status="active", processing=True,
                        payment_started_at=now)  # fmt: skip
    _, report, _ = await recompute.request(store, dunning, sub, "flight-1")
    assert report is not None and report.status == "deferred" and report.plan.actions == ()
    assert report.plan.deferred and "processing" in report.plan.deferred
    assert [a.kind for a in report.plan.withheld][0] == "end_campaign"
    assert (await dunning.status(sub)).outcome == "running" and ledger(store, sub, DRIFT) == []
    await _end(dunning, sub)


async def test_repeated_key_answers_the_first_result(dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    sub = new_sub("rc_key")
    await _active_row(dunning, store, sub)
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="suspended"))
    first = await recompute.request(store, dunning, sub, "same")
    with store.engine.begin() as conn:  # broken again: a repeated request must not act on it
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="suspended"))
    second = await recompute.request(store, dunning, sub, "same")
    assert first[0] == "processed" and second[0] == "duplicate" and second[1] is None
    assert second[2] == first[2] == "applied: set_entitlement=written"
    assert len(ledger(store, sub, DRIFT)) == 1


async def test_outside_the_rollout_slice_no_campaign_starts(tenv, settings, store: Store, new_sub) -> None:
    off = settings.model_copy(update={"rollout": RolloutSettings(mode="off")})
    async with running_worker(tenv, off, store) as client:
        sub = new_sub("rc_off")
        await _active_row(client, store, sub)
        await _past_due(client, store, sub, webhook=False)
        _, report, _ = await recompute.request(store, client, sub, "off-1")
        assert report is not None and "start_campaign" not in [a.kind for a in report.plan.actions]
        assert report.plan.deferred and "rollout" in report.plan.deferred
        assert [a.kind for a in report.plan.withheld] == ["start_campaign"]
        again = await recompute.request(store, client, sub, "off-2")  # no new drift row every sweep
        assert again[1] is not None and again[1].plan.actions == ()


async def test_unknown_to_the_provider_changes_nothing(dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    sub = new_sub("rc_unknown")
    await _active_row(dunning, store, sub)
    with store.engine.begin() as conn:
        conn.execute(
            fake_account.fake_subscriptions.delete().where(fake_account.fake_subscriptions.c.subscription_id == sub)
        )
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="limited"))
    _, report, _ = await recompute.request(store, dunning, sub, "unk-1")
    assert report is not None and report.provider_error and "unknown to the fake provider" in report.provider_error
    assert report.plan.actions == () and report.status == "deferred"
    assert entitlement_of(store, sub, "m").entitlement == "limited"  # type: ignore[union-attr]
    with pytest.raises(recompute.UnknownSubscription, match="--provider"):
        await recompute.dry_run(store, dunning, new_sub("rc_never"))


async def test_http_route(api, dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    sub = new_sub("rc_http")
    await _active_row(dunning, store, sub)
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="limited"))
    path = f"/v1/subscriptions/{sub}/recompute"
    assert (await api.post(path)).status_code == 401
    before = (await api.get("/metrics.json")).json()["dunning.drift_detected"].get("projection.entitlement", 0)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}

    dry = await api.post(path, params={"dry_run": "true"}, headers=auth)
    body = dry.json()
    assert dry.status_code == 200 and body["dry_run"] is True and body["status"] == "dry_run"
    assert (
        body["observed"]["projection"]["entitlement"] == "limited" and body["plan"]["desired"]["entitlement"] == "full"
    )
    assert [a["kind"] for a in body["plan"]["actions"]] == ["set_entitlement"]
    assert entitlement_of(store, sub, "m").entitlement == "limited"  # type: ignore[union-attr]

    done = await api.post(path, headers={**auth, "Idempotency-Key": "k1"})
    assert done.status_code == 200 and done.json()["status"] == "applied"
    assert entitlement_of(store, sub, "m").entitlement == "full"  # type: ignore[union-attr]
    again = await api.post(path, headers={**auth, "Idempotency-Key": "k1"})
    assert again.json() == {"subscription_id": sub, "status": "duplicate", "result": "applied: set_entitlement=written",
                            "duplicate": True}  # fmt: skip
    unknown = await api.post(f"/v1/subscriptions/{new_sub('rc_nobody')}/recompute", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_subscription"
    bad = await api.post(path, headers={**auth, "Idempotency-Key": "\x01"})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["message"]
    assert len(ledger(store, sub, DRIFT)) == 1
    metrics = (await api.get("/metrics.json")).json()
    assert metrics["dunning.drift_detected"]["projection.entitlement"] == before + 1
    assert metrics["dunning.drift_detected.by_source"]["support"] >= 1


async def test_the_cli_shows_then_fixes(tenv, dunning: SkippingDunningClient, store: Store, settings, new_sub,
                                        tmp_path) -> None:  # fmt: skip
    """`dunning recompute` as an ops person runs it (a process against the same Temporal
    and database): --dry-run shows the stores side by side and changes nothing; then it fixes."""
    import os

    from tests.test_devserver import dunning_command

    sub = new_sub("rc_cli")
    await _active_row(dunning, store, sub)
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(entitlement="suspended"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env.update(DUNNING_HOME=str(tmp_path), DUNNING_DATABASE_URL=settings.db_url,
               DUNNING_TEMPORAL_ADDRESS=tenv.client.service_client.config.target_host,
               DUNNING_TEMPORAL_TASK_QUEUE=settings.temporal_task_queue)  # fmt: skip

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(*dunning_command(), "recompute", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    code, out = await run(sub, "--dry-run")
    assert code == 0, out
    assert "dry run, nothing changed" in out and "entitlement" in out and "suspended" in out
    assert "set_entitlement full" in out and "provider" in out and "desired" in out
    assert entitlement_of(store, sub, "m").entitlement == "suspended"  # type: ignore[union-attr]
    code, out = await run(sub)
    assert code == 0, out
    assert "status: applied" in out and entitlement_of(store, sub, "m").entitlement == "full"  # type: ignore[union-attr]
    code, out = await run(sub, "--provider", "paypal")
    assert code == 2 and "paypal" in out


async def test_recompute_while_the_engine_charges_waits_for_the_answer(tenv, settings, store: Store, new_sub,
                                                                       monkeypatch) -> None:  # fmt: skip
    """The provider shows the invoice paid while the engine's own retry is at the provider
    (claimed, no answer yet): recompute changes nothing until that charge answers, then
    the campaign ends by the charge's own result, with one charge and no drift repair."""
    import threading

    from dunning.providers.fake_actions import FakeProvider
    from starter.client import DunningClient

    entered, release = threading.Event(), threading.Event()
    charge = FakeProvider.retry_charge

    def held(self, *args, **kwargs):
        entered.set()
        release.wait(20)
        return charge(self, *args, **kwargs)

    monkeypatch.setattr(FakeProvider, "retry_charge", held)
    async with running_worker(tenv, settings, store) as client:
        sub = new_sub("rc_charging")
        await _past_due(client, store, sub)
        fake_state.set_card(store.engine, sub, "succeed")
        ended = asyncio.create_task(client._handle(sub).result())  # time skips to the day-1 retry
        assert await asyncio.to_thread(entered.wait, 20), "the retry never reached the provider"
        fake_account.update(store.engine, sub, await client.now(), status="active", invoice_state="paid")
        wall = DunningClient(tenv.client, store, settings)  # the claim is stamped with the wall clock
        try:
            _, report, _ = await recompute.request(store, wall, sub, "while-charging")
        finally:
            release.set()
        assert report is not None and report.status == "deferred" and report.plan.actions == ()
        assert report.plan.deferred and "in-flight window" in report.plan.deferred
        assert [a.kind for a in report.plan.withheld][0] == "end_campaign"
        state = await ended
    assert state.outcome == "recovered" and state.retries[-1].outcome == "succeeded"
    assert [c.action for c in fake_state.calls(store.engine, sub)] == ["charge"]
    assert ledger(store, sub, DRIFT) == []
