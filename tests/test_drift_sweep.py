"""The drift sweep: DriftSweep on the time-skipping server (both databases) fixes drift
nobody reported, once; its batches and candidates; the Schedule on a real dev server.
A sweep is awaited through a plain handle, not the test environment's skipping one:
time must not skip while it runs, or the campaigns it starts would race to their end."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from activities.sweep import SweepActivities
from dunning.config import load_settings
from dunning.providers import fake_account
from dunning.recompute_settings import RecomputeSettings
from dunning.reconcile import Desired, Plan
from dunning.store.entitlements import entitlement_of
from dunning.store.schema import subscriptions
from dunning.store.store import Store
from starter import recompute
from starter.client import DunningClient
from starter.schedules import apply_schedules, describe_schedules
from tests.temporal_fixtures import SkippingDunningClient, ledger, running_worker
from tests.test_devserver import await_until, devserver  # noqa: F401  (fixture)
from tests.test_recompute import _active_row, _past_due  # how the stores are made to disagree
from worker.app import build_worker
from workflows.drift_sweep import SCHEDULE_ID, DriftSweep, SweepInput, SweepSummary

pytestmark = pytest.mark.asyncio
DRIFT = "dunning.drift_detected"
FAKE = fake_account.fake_subscriptions


def _set(store: Store, sub: str, **values) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions).where(subscriptions.c.id == sub).values(**values))


async def _sweep(client: DunningClient, **inp) -> tuple[SweepSummary, WorkflowExecutionStatus | None]:
    started = await client.client.start_workflow(DriftSweep.run, SweepInput(**inp), id=f"sweep-{uuid.uuid4().hex}",
                                                 task_queue=client.settings.temporal_task_queue)  # fmt: skip
    summary = await client.client.get_workflow_handle(started.id, result_type=SweepSummary).result()
    first = client.client.get_workflow_handle(started.id, run_id=started.result_run_id)
    return summary, (await first.describe()).status  # the first run: continued as new, or completed


async def test_the_sweep_fixes_each_drift_once(tenv, settings, store: Store, new_sub, mailbox) -> None:
    rate = settings.recompute.model_copy(update={"sweep_rate_per_second": 10})
    async with running_worker(tenv, settings.model_copy(update={"recompute": rate}), store) as dunning:
        paid, drop, ent, ok, unknown = (new_sub(f"sw_{n}") for n in ("paid", "drop", "ent", "ok", "unknown"))
        await _past_due(dunning, store, paid)  # paid at the provider, no webhook
        fake_account.update(store.engine, paid, await dunning.now(), status="active", invoice_state="paid")
        await _active_row(dunning, store, drop)  # the failure webhook was dropped
        failed_at = await _past_due(dunning, store, drop, webhook=False)
        await _active_row(dunning, store, ent)  # someone's manual SQL
        _set(store, ent, entitlement="limited")
        await _active_row(dunning, store, ok)
        await _active_row(dunning, store, unknown)  # the provider does not know it
        with store.engine.begin() as conn:
            conn.execute(FAKE.delete().where(FAKE.c.subscription_id == unknown))
        _set(store, unknown, entitlement="limited")
        before_ok = store.get_subscription(ok)

        began = time.monotonic()  # 5 subscriptions, 3 pages of 2 (continued as new after each), batches of 1
        summary, first_run = await _sweep(dunning, page_size=2, batch=1, max_pages=1)
        assert first_run == WorkflowExecutionStatus.CONTINUED_AS_NEW
        assert time.monotonic() - began >= 0.4  # paced: at most 10 provider reads a second
        rows = {sub: ledger(store, sub, DRIFT) for sub in (paid, drop, ent, ok, unknown)}
        assert {sub: [r.data["source"] for r in found] for sub, found in rows.items()} == {
            paid: ["sweep"], drop: ["sweep"], ent: ["sweep"], ok: [], unknown: []}  # fmt: skip
        fields = Counter(f for sub in (paid, drop, ent) for f in rows[sub][0].data["drift"])
        assert summary == SweepSummary(checked=5, drifted=3, applied=3, deferred=1, errors=0, fields=dict(fields))

        assert (await dunning.status(paid)).outcome == "recovered"
        projection = [store.get_subscription(sub) for sub in (paid, drop)]
        assert [(r.status, r.dunning_campaign_started_at, r.entitlement) for r in projection if r] == [
            ("active", None, "full"), ("past_due", failed_at, "full")]  # fmt: skip
        state = await dunning.status(drop)
        assert state.outcome == "running" and state.campaign_started_at == failed_at
        assert [entitlement_of(store, sub, "m").entitlement for sub in (ent, unknown)] == ["full", "limited"]
        assert store.get_subscription(ok) == before_ok

        # each subscription's verdict, as one batch reports it: nothing left to fix
        sweep = SweepActivities(dunning.settings, store, dunning)
        items = await ActivityEnvironment().run(sweep.sweep_reconcile, [paid, drop, ent, ok, unknown], "check")
        assert {i.subscription_id: i.status for i in items} == {
            paid: "no_drift", drop: "no_drift", ent: "no_drift", ok: "no_drift", unknown: "deferred"}  # fmt: skip
        again, first_run = await _sweep(dunning, page_size=10, batch=3)
        assert again == SweepSummary(checked=5, deferred=1) and first_run == WorkflowExecutionStatus.COMPLETED
        assert {sub: len(ledger(store, sub, DRIFT)) for sub in rows} == {paid: 1, drop: 1, ent: 1, ok: 0, unknown: 0}
        assert (await dunning.status(drop)).outcome == "running"


async def test_a_retried_batch_answers_what_it_did(dunning: SkippingDunningClient, store: Store, new_sub) -> None:
    ent, ok = new_sub("sw_retry_ent"), new_sub("sw_retry_ok")
    for sub in (ent, ok):
        await _active_row(dunning, store, sub)
    _set(store, ent, entitlement="suspended")
    sweep = SweepActivities(dunning.settings, store, dunning)
    first = await ActivityEnvironment().run(sweep.sweep_reconcile, [ent, ok], "run-1")
    assert [(i.status, "projection.entitlement" in i.drift) for i in first] == [("applied", True), ("no_drift", False)]
    _set(store, ent, entitlement="suspended")  # broken again: the same sweep key must not act twice
    retried = await ActivityEnvironment().run(sweep.sweep_reconcile, [ent, ok], "run-1")
    assert [i.status for i in retried] == ["applied", "no_drift"] and len(ledger(store, ent, DRIFT)) == 1
    resumed = ActivityEnvironment()  # an attempt after a crash: the heartbeat holds what was done
    resumed.info = dataclasses.replace(resumed.info, heartbeat_details=[[first[0].model_dump()]])
    assert await resumed.run(sweep.sweep_reconcile, [ent, ok], "run-2") == [first[0], first[1]]  # ent not redone
    assert len(ledger(store, ent, DRIFT)) == 1 and entitlement_of(store, ent, "m").entitlement == "suspended"


async def test_one_failure_is_an_error_item_and_an_outage_is_raised(tmp_path, monkeypatch) -> None:
    async def plan_for(store, client, sub, provider=None):
        if sub == "bad":
            raise ValueError("the provider says ada@example.com has no card")
        if sub == "down":
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return None, Plan(subscription_id=sub, desired=Desired(status="active", entitlement="full", campaign=False,
                                                                anchor=None), rule="no debt")  # fmt: skip

    monkeypatch.setattr(recompute, "plan_for", plan_for)
    sweep = SweepActivities(load_settings(home=tmp_path), None, None)  # type: ignore[arg-type]
    items = await ActivityEnvironment().run(sweep.sweep_reconcile, ["a", "bad", "b"], "k")
    assert [(i.subscription_id, i.status) for i in items] == [("a", "no_drift"), ("bad", "error"), ("b", "no_drift")]
    assert items[1].error == "ValueError: the provider says <address> has no card"
    with pytest.raises(OperationalError):
        await ActivityEnvironment().run(sweep.sweep_reconcile, ["a", "down"], "k")


async def test_candidates_are_the_subscriptions_worth_a_look(settings, store: Store) -> None:
    now, old = datetime.now(UTC), datetime.now(UTC) - timedelta(days=3)
    engine_rows = {  # id: (status, entitlement, anchor, updated_at)
        "c_healthy": ("active", "full", None, old), "c_pastdue": ("past_due", "full", now, old),
        "c_unpaid": ("unpaid", "canceled", None, old), "c_limited": ("active", "limited", None, old),
        "c_anchor": ("active", "full", old, old), "c_recent": ("active", "full", None, now),
    }  # fmt: skip
    with store.write() as conn:
        for sub, (status, level, anchor, at) in engine_rows.items():
            conn.execute(subscriptions.insert().values(id=sub, customer_id=f"cus_{sub}", provider="fake", status=status,
                                                       entitlement=level, dunning_campaign_started_at=anchor,
                                                       updated_at=at))  # fmt: skip
    for sub, status, at in [("c_healthy", "active", old), ("c_pastdue", "past_due", old),
                            ("c_fake_due", "past_due", old), ("c_fake_recent", "active", now),
                            ("c_fake_old", "active", old)]:  # fmt: skip
        fake_account.update(store.engine, sub, at, status=status)
    sweep = SweepActivities(settings, store, None)  # type: ignore[arg-type]  # no provider read here
    everything = await sweep.sweep_candidates(None, 100)
    wanted = {"c_pastdue", "c_unpaid", "c_limited", "c_anchor", "c_recent", "c_fake_due", "c_fake_recent"}
    assert set(everything) == wanted and len(everything) == 7  # a subscription in both tables once
    first = await sweep.sweep_candidates(None, 3)
    assert first + await sweep.sweep_candidates(first[-1], 100) == everything  # the keyset cursor: same order
    assert await sweep.sweep_candidates(everything[-1], 100) == []


@pytest.mark.devserver
async def test_the_schedule_sweeps_on_a_dev_server(devserver, tmp_path) -> None:  # noqa: F811
    db_url = f"sqlite:///{tmp_path / 'dunning.db'}"
    every = RecomputeSettings(sweep_interval_seconds=2, sweep_rate_per_second=50)
    settings = load_settings(home=tmp_path, database_url=db_url, temporal_address=devserver.settings.temporal_address,
                             temporal_task_queue=f"tq-sweep-{uuid.uuid4().hex}", recompute=every)  # fmt: skip
    client = devserver.client
    handle = client.get_schedule_handle(SCHEDULE_ID)
    with Store.open(db_url) as store:
        try:
            assert await apply_schedules(client, settings) == "created"
            desc = await handle.describe()
            action = desc.schedule.action
            assert [i.every for i in desc.schedule.spec.intervals] == [timedelta(seconds=2)]
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.task_queue) == ("DriftSweep", settings.temporal_task_queue)
            assert desc.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
            assert await apply_schedules(client, settings) == "updated"
            async with build_worker(client, settings, store):
                dunning = DunningClient(client, store, settings)
                sub = f"sw_dev_{uuid.uuid4().hex[:8]}"
                await _active_row(dunning, store, sub)
                _set(store, sub, entitlement="limited")  # behind the engine's back

                async def fixed() -> bool:
                    found = await asyncio.to_thread(entitlement_of, store, sub, "m")
                    return found is not None and found.entitlement == "full"

                await await_until(fixed, 12, lambda: f"{sub} still limited; drift rows {ledger(store, sub, DRIFT)}")
                await asyncio.sleep(3 * 2 + 0.5)  # three more intervals: the fix is not recorded again
                drift = ledger(store, sub, DRIFT)
                assert len(drift) == 1 and drift[0].data["source"] == "sweep", drift
                view = await describe_schedules(client)
                assert len(view.recent) >= 3 and view.next_runs, view
                assert sum(r.summary.applied for r in view.recent if r.summary) == 1, view
        finally:
            await handle.delete()
