"""Fault injection, outages: Temporal restarted, workers gone past several due actions, an
outbound receiver down, a provider refusing our key (issue 8).

Real parts only: `temporal server start-dev` (one restartable on a fixed port with a
persistent --db-filename), `dunning worker` subprocesses, an aiosmtpd sink and loopback
HTTP servers (tests/fault_http.py) for the outbound receiver and the Stripe API. Each case
counts emails by Message-ID, ledger rows, and provider calls or webhook deliveries.
Over 300 lines on purpose: one module per fault family (email faults are in
test_faults_email.py), sharing one dev server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from temporalio.client import WorkflowHandle

from dunning import journey
from dunning.providers import fake_state
from dunning.store import outbox
from tests.fault_http import Receiver
from tests.fault_procs import (
    Rig,
    TemporalServer,
    asleep,
    assert_each_step_delivered,
    rigs,
    spawn,
    stages,
    temporal_server,
    until,
)
from workflows.campaign import DunningCampaign

__all__ = ["rigs", "spawn", "temporal_server"]  # fixtures

pytestmark = pytest.mark.devserver

NO_RETRIES = "retries = { soft = { days = [] }, unknown = { days = [] } }"
STEPS3 = ["first_notice", "reminder", "final_notice"]


def emails(*days: float) -> str:
    keys = STEPS3[: len(days)]
    return ",\n".join(
        f'  {{ after_days = {d:g}, key = "{k}", template = "{k}" }}' for d, k in zip(days, keys, strict=True)
    )


# --- 5. Temporal restarted mid-campaign -----------------------------------------------------------
RESTART_DAY = 6.0  # longer than a dev-server restart, so no step comes due twice over while it is down


async def test_temporal_restarted_mid_campaign_every_step_exactly_once(rigs, tmp_path) -> None:
    server = TemporalServer(tmp_path / "temporal-restart")
    await server.start()
    try:
        config = f"""
day_seconds = {RESTART_DAY}
[campaign]
grace_days = 4
steps = [
{emails(0, 1, 2)}
]
consequences = [{{ level = "full", min_days = 0 }}]
{NO_RETRIES}
[campaign.providers]
fake = {{ retries = "off", on_exhaustion = "cancel" }}
"""
        rig = rigs("restart", config, server=server)
        rig.sink.start()
        await rig.worker()
        sub, handle = await rig.start_campaign()

        async def first_sent_and_asleep() -> bool:
            return rig.sink.steps(sub) == ["first_notice"] and await asleep(handle, timedelta(seconds=2))

        await until(first_sent_and_asleep, 30, lambda: f"first notice sent, timer pending\n{rig.diagnostics(sub)}")
        began = time.monotonic()
        client = await server.restart(down_for=1.0)
        restart_took = time.monotonic() - began

        fresh = client.get_workflow_handle_for(DunningCampaign.run, handle.id)  # the old connection is gone
        state = await rig.sent_then_recover(sub, fresh, STEPS3, 40)
        assert state.outcome == "recovered", state
        assert state.steps_sent == STEPS3, (
            f"sent {state.steps_sent}, skipped {state.steps_skipped} (restart took {restart_took:.1f}s)\n{rig.diagnostics(sub)}"
        )
        assert state.steps_skipped == [] and state.steps_unconfirmed == [], state
        copies = assert_each_step_delivered(rig, sub, STEPS3, max_copies=1)
        rows = rig.deliveries(sub)
        assert all(rows[k].sends == 1 for k in copies), rig.diagnostics(sub)
        types = [e.type for e in rig.ledger(sub)]
        assert types.count("dunning.recovered") == 1 and types.count("dunning.campaign_started") == 1, types
        assert all(w.poll() is None for w in rig.workers), "a worker died while Temporal was down\n" + rig.diagnostics(
            sub
        )
    finally:
        server.stop()


# --- 6. an outage longer than a retry gap ---------------------------------------------------------
GAP_DAY = 3.0
OUTAGE_CONFIG = f"""
day_seconds = {GAP_DAY}
[campaign]
grace_days = 8
late_tolerance_seconds = 1  # an outage of days, on 3-second days: beyond the engine's own lateness
steps = [
{emails(0, 2, 4)}
]
consequences = [
  {{ level = "suspended", min_days = 4 }},
  {{ level = "limited", min_days = 2 }},
  {{ level = "full", min_days = 0 }},
]
retries = {{ soft = {{ days = [1, 2, 3, 4] }}, unknown = {{ days = [] }} }}
[campaign.providers]
fake = {{ retries = "engine", on_exhaustion = "cancel" }}
"""
# The worker is back after retry days 1-4, both rungs and two emails came due; the final
# notice (day 4) still leaves days of notice before the grace period ends (day 8).
BACK_AT_DAY = 4.5
PERFORMED = {
    "email": "dunning.step_sent",
    "retry": "dunning.retry_attempted",
    "consequence": "dunning.consequence_changed",
}


def assert_missed_recorded(
    rig: Rig, sub: str, situation: journey.Situation, down_at: datetime, back_at: datetime
) -> list[journey.Due]:
    """Each action of the plan that came due while no worker ran is in the ledger once:
    `dunning.action_skipped` with a reason, or performed with `late_by`. Returns them."""
    anchor = next(e for e in rig.ledger(sub) if e.type == "dunning.campaign_started").campaign_started_at
    missed = [d for lane in journey.lanes(rig.plan(), anchor, situation) for d in lane if down_at < d.at <= back_at]
    ledger = rig.ledger(sub)
    problems = []
    for due in missed:
        skipped = [e for e in ledger if e.type == "dunning.action_skipped" and e.step_key == due.key]
        done = [e for e in ledger if e.type == PERFORMED[due.kind] and e.step_key == due.key]
        if len(skipped) + len(done) != 1:
            problems.append(f"{due.key}: {len(skipped)} skipped + {len(done)} performed rows (expected one)")
        elif skipped and not skipped[0].data.get("reason"):
            problems.append(f"{due.key}: skipped without a reason")
        elif done and not (done[0].data.get("late_by") or 0) > 0:
            problems.append(f"{due.key}: performed late without late_by")
    assert not problems, (
        "missed actions not recorded in the ledger:\n  " + "\n  ".join(problems) + f"\n{rig.diagnostics(sub)}"
    )
    return missed


async def outage(rig: Rig, sub: str, handle: WorkflowHandle, worker: subprocess.Popen, back_at_day: float) -> tuple:
    """SIGKILL `worker` once the first notice is out and the campaign sleeps; start a new
    worker `back_at_day` days after the anchor. Returns (anchor, down_at, back_at)."""

    async def first_sent_and_asleep() -> bool:
        return rig.sink.steps(sub) == ["first_notice"] and await asleep(handle, timedelta(seconds=1))

    await until(first_sent_and_asleep, 30, lambda: f"first notice sent, timer pending\n{rig.diagnostics(sub)}")
    rig.sigkill(worker)
    down_at = datetime.now(UTC)
    before = rig.ledger(sub)
    anchor = next(e for e in before if e.type == "dunning.campaign_started").campaign_started_at
    back_at = anchor + timedelta(seconds=back_at_day * rig.plan().day_seconds)
    await asyncio.sleep((back_at - datetime.now(UTC)).total_seconds())  # the outage itself
    assert rig.sink.steps(sub) == ["first_notice"], f"sent while no worker ran\n{rig.diagnostics(sub)}"
    assert rig.ledger(sub) == before, f"recorded while no worker ran\n{rig.diagnostics(sub)}"
    assert fake_state.calls(rig.store.engine, sub) == [], "the provider was called while no worker ran"
    await rig.worker()
    return anchor, down_at, back_at


async def test_worker_outage_across_due_actions_one_catch_up_each_recorded(rigs) -> None:
    """The campaign sleeps towards retry day 1 when its worker dies; it is back on day 4.5."""
    rig = rigs("gap", OUTAGE_CONFIG)
    rig.sink.start()
    worker = await rig.worker()
    sub, handle = await rig.start_campaign(decline_class="soft")  # the fake card keeps declining
    anchor, down_at, back_at = await outage(rig, sub, handle, worker, BACK_AT_DAY)

    # the catch-up ends with the final notice (emails go after retries and rungs); then a payment
    state = await rig.sent_then_recover(sub, handle, ["final_notice"], 40)
    ledger = rig.ledger(sub)
    where = rig.diagnostics(sub)
    # one catch-up charge, never several at once
    charges = [c for c in fake_state.calls(rig.store.engine, sub) if c.action == "charge"]
    assert len(charges) == 1, f"{len(charges)} charges after the outage: {charges}\n{where}"
    # the entitlement jumps to the rung that holds now
    levels = [e.data.get("level") for e in ledger if e.type == "dunning.consequence_changed"]
    assert levels == ["suspended"], f"consequence changes {levels}\n{where}"
    # of the overdue emails only the latest is sent
    assert rig.sink.steps(sub) == ["first_notice", "final_notice"], where
    assert_each_step_delivered(rig, sub, ["first_notice", "final_notice"], max_copies=1)
    assert state.outcome == "recovered", state
    # each missed action recorded: skipped with a reason, or performed late with late_by
    situation = journey.Situation(decline_class="soft", last_retry_at=anchor)
    missed = assert_missed_recorded(rig, sub, situation, down_at, back_at)
    assert {d.kind for d in missed} == {"email", "retry", "consequence"}, missed  # the scenario happened


EMAILS_ONLY = f"""
day_seconds = {GAP_DAY}
[campaign]
grace_days = 8
late_tolerance_seconds = 1  # an outage of days, on 3-second days: beyond the engine's own lateness
steps = [
{emails(0, 1, 2)}
]
consequences = [{{ level = "full", min_days = 0 }}]
{NO_RETRIES}
[campaign.providers]
fake = {{ retries = "off", on_exhaustion = "cancel" }}
"""


async def test_worker_outage_while_asleep_towards_an_email_only_the_latest_overdue_is_sent(rigs) -> None:
    """The campaign sleeps towards the reminder (day 1) when its worker dies; when it is back
    (day 2.5, the dead worker's sticky queue adds ~10 s) the final notice (day 2) is due too."""
    rig = rigs("gapmail", EMAILS_ONLY)
    rig.sink.start()
    worker = await rig.worker()
    sub, handle = await rig.start_campaign()
    anchor, down_at, back_at = await outage(rig, sub, handle, worker, 2.5)

    state = await rig.sent_then_recover(sub, handle, ["final_notice"], 40)
    assert rig.sink.steps(sub) == ["first_notice", "final_notice"], (
        f"of the overdue reminder and final notice only the latest may be sent\n{rig.diagnostics(sub)}"
    )
    assert_each_step_delivered(rig, sub, ["first_notice", "final_notice"], max_copies=1)
    assert state.outcome == "recovered", state
    missed = assert_missed_recorded(rig, sub, journey.Situation(last_retry_at=anchor), down_at, back_at)
    assert [d.key for d in missed] == ["reminder", "final_notice"], missed  # the scenario happened


# --- 7. the outbound receiver down, then back -----------------------------------------------------
HOOK_DAY = 1.5
EXPECTED_EVENTS = ["campaign_started", "consequence_changed", "exhausted"]


async def test_outbound_receiver_down_then_back_every_event_once_in_order(rigs) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    hooks = Receiver()  # port reserved, nothing listens
    hooks.recorder.json("POST", "/hook", 200, {})
    config = f"""
day_seconds = {HOOK_DAY}
[campaign]
grace_days = 2
steps = [
{emails(0)}
]
consequences = [{{ level = "limited", min_days = 1 }}, {{ level = "full", min_days = 0 }}]
{NO_RETRIES}
[campaign.providers]
fake = {{ retries = "off", on_exhaustion = "cancel" }}
"""
    with hooks:
        rig = rigs(
            "hooks", config, outbound_urls=f"{hooks.base}/hook", outbound_secret=secret, outbound_poll_seconds=0.5
        )
        rig.sink.start()
        await rig.worker()
        started = [await rig.start_campaign(tag=str(i)) for i in range(2)]

        # the campaigns never wait for the receiver: both end while it is down
        for sub, handle in started:
            state = await rig.result(handle, 30)
            assert state.outcome == "exhausted", state
            assert rig.sink.steps(sub) == ["first_notice"], rig.diagnostics(sub)
        subs = [sub for sub, _ in started]

        def outbox_rows() -> list:
            return [r for r in outbox.list_events(rig.store, limit=1000) if r.subscription_id in subs]

        def retried_while_down() -> bool:  # each subscription's first event failed twice, so far
            firsts = [next((r for r in outbox_rows() if r.subscription_id == sub), None) for sub in subs]
            return all(r is not None and r.status == "pending" and r.attempts >= 2 for r in firsts)

        await until(retried_while_down, 20, lambda: f"failed attempts while down: {outbox_rows()}")
        assert hooks.recorder.requests == []
        hooks.start()

        def types(sub: str) -> list[str]:  # by distinct webhook-id, in arrival order
            seen = {r.headers.get("webhook-id"): json.loads(r.body) for r in hooks.recorder.requests}
            return [body.get("type") for body in seen.values() if body.get("subscription_id") == sub]

        await until(
            lambda: all(types(sub) == EXPECTED_EVENTS for sub in subs)
            and all(r.status == "delivered" for r in outbox_rows()), 30,
            lambda: f"{EXPECTED_EVENTS} at the receiver (and marked delivered) for each of {subs}; got {[types(s) for s in subs]}; "
            f"outbound_events rows: {[(r.subscription_id, r.type, r.status, r.attempts) for r in outbox_rows()]}",
        )  # fmt: skip

    rows = outbox_rows()
    requests = hooks.recorder.requests
    ids = [r.headers.get("webhook-id") for r in requests]
    assert len(ids) == len(set(ids)), f"an event delivered twice: {ids}"
    verifier = Webhook(secret)
    for r in requests:
        payload = verifier.verify(r.body, r.headers)  # Standard Webhooks: a host verifies with the library
        assert payload["subscription_id"] in subs, payload
    for sub in subs:
        mine = [r for r in rows if r.subscription_id == sub]
        assert [r.type for r in mine] == EXPECTED_EVENTS and all(r.status == "delivered" for r in mine), mine
        got = [r.headers["webhook-id"] for r in requests if json.loads(r.body)["subscription_id"] == sub]
        assert got == [r.event_id for r in mine], f"{sub}: out of order or missing: {got}"


# --- 8. the provider answers 401 at exhaustion ----------------------------------------------------
async def test_provider_401_at_exhaustion_ends_recorded_needs_attention(rigs) -> None:
    stripe_api = Receiver().start()
    stripe_api.recorder.json(
        "DELETE", r"/v1/subscriptions/.*", 401,
        {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****ault"}},
    )  # fmt: skip
    config = f"""
day_seconds = 2
[campaign]
grace_days = 2
steps = [
{emails(0)}
]
consequences = [{{ level = "full", min_days = 0 }}]
{NO_RETRIES}
[campaign.providers]
stripe = {{ retries = "provider", on_exhaustion = "cancel" }}
"""
    with stripe_api:
        rig = rigs("auth401", config, stripe_api_key="sk_test_fault", stripe_api_base=stripe_api.base)
        rig.sink.start()
        await rig.worker()
        sub, handle = await rig.start_campaign(provider="stripe")
        state = await rig.result(handle, 40)  # not retried forever

    where = rig.diagnostics(sub)
    deletes = [c for c in stripe_api.recorder.calls() if c[0] == "DELETE"]
    assert 1 <= len(deletes) <= 3, f"{len(deletes)} cancel calls for a 401\n{where}"
    ledger = rig.ledger(sub)
    failed = [e for e in ledger if e.type == "dunning.action_failed"]
    assert len(failed) == 1 and failed[0].step_key == "terminal", f"no dunning.action_failed for the cancel\n{where}"
    assert "@" not in json.dumps(failed[0].data), failed[0].data
    ends = [e.type for e in ledger if e.type in ("dunning.exhausted", "dunning.resolved")]
    assert len(ends) == 1, f"the campaign's end is not recorded once: {ends}\n{where}"
    assert state.outcome == "exhausted", state
    assert "needs_attention" in await stages(handle), await stages(handle)
    described = await handle.describe()
    stage = described.search_attributes.get("DunningStage")
    assert stage == ["needs_attention"], f"DunningStage at the end: {stage}"
    subscription = rig.store.get_subscription(sub)
    assert subscription is not None and subscription.status != "past_due", subscription
    assert_each_step_delivered(rig, sub, ["first_notice"], max_copies=1)
