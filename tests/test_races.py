"""Races on the time-skipping server: the payment service's recovery arrives while each
kind of activity runs — before the activity's own check-and-claim, or after its effect —
and a transient failure hits the campaign's end. What a user checks: emails at the SMTP
server, the fake provider's recorded charges and cancels, the ledger, the entitlement
API's answer, and what the payment service was told.

A customer who paid is never charged, restricted, emailed or cancelled afterwards; a
payment that lands after the cancel ran is `recovered_after_cancel`, never lost."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker

from activities.campaign import CampaignActivities
from activities.outbound import OutboundActivities
from activities.payments import PaymentActivities
from dunning.contracts import ConsequenceRule
from dunning.providers import fake_state
from dunning.store.entitlements import entitlement_of
from tests.temporal_fixtures import SkippingDunningClient, ledger, running_worker, without_engine_retries
from workflows.campaign import DunningCampaign

DAY = timedelta(days=1)
DECLINE = "decline:insufficient_funds"


class PayDuring(Interceptor):
    """When armed for an activity type, the payment service pays through the real path
    (inbox, projection, `recover` Update) while that activity runs: 'before' its own
    check-and-claim, or 'after' its effect. Waits until the projection shows the payment."""

    def __init__(self) -> None:
        self.activity_type: str | None = None
        self.phase = "before"
        self.client: SkippingDunningClient | None = None
        self.answer: asyncio.Task | None = None

    def arm(self, activity_type: str, phase: str) -> None:
        self.activity_type, self.phase = activity_type, phase

    async def pay(self, subscription_id: str) -> None:
        """Pay, and go on once the projection has decided the payment (its Update may
        only answer after the activity this interceptor holds)."""
        assert self.client is not None
        key = f"race-{subscription_id}"
        self.answer = asyncio.create_task(self.client.payment_recovered(subscription_id, "paid_out_of_band", key))
        for _ in range(500):
            row = await asyncio.to_thread(self.client.store.inbox_get, "fake", f"payment_service:{key}")
            if row is not None and row.payload.get("decision"):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the payment never reached the projection")

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        outer = self

        class Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:
                fire = activity.info().activity_type == outer.activity_type
                if fire:
                    outer.activity_type = None  # once
                    sub = input.args[0].subscription_id
                    if outer.phase == "before":
                        await outer.pay(sub)
                result = await super().execute_activity(input)
                if fire and outer.phase == "after":
                    await outer.pay(sub)
                return result

        return Inbound(next)


@asynccontextmanager
async def racing_worker(env, settings, store) -> AsyncIterator[tuple[SkippingDunningClient, PayDuring]]:
    payer = PayDuring()
    client = SkippingDunningClient(env, store, settings)
    payer.client = client
    campaign, payments = CampaignActivities(settings, store), PaymentActivities(settings, store)
    acts = [*campaign.all(), payments.retry_payment, payments.terminal_action, OutboundActivities(store).emit]
    async with Worker(
        env.client, task_queue=settings.temporal_task_queue, workflows=[DunningCampaign], activities=acts,
        interceptors=[payer], activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=4),
    ):  # fmt: skip
        yield client, payer


def charges(store, sub: str) -> list[str]:
    return [c.result for c in fake_state.calls(store.engine, sub) if c.action == "charge"]


def cancels(store, sub: str) -> list:
    return [c for c in fake_state.calls(store.engine, sub) if c.action == "cancel"]


async def run_race(tenv, settings, store, new_sub, name, activity_type, phase, decline_class=None, card="succeed"):
    sub, cus = new_sub(name), f"cus_{name}"
    fake_state.set_card(store.engine, sub, card)
    async with racing_worker(tenv, settings, store) as (dunning, payer):
        payer.arm(activity_type, phase)
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(sub, cus, f"{name}@example.com", anchor, decline_class=decline_class)
        state = await handle.result()
        assert payer.answer is not None, f"{activity_type} never ran"
        answer = await payer.answer
    return sub, state, answer


@pytest.mark.parametrize(
    "activity_type,decline_class",
    [("send_step_email", None), ("retry_payment", "soft"), ("change_entitlement", "soft"), ("terminal_action", "soft")],
)
async def test_a_payment_that_lands_before_an_effect_claims_stops_it(
    tenv, new_sub, store, settings, mailbox, activity_type, decline_class
):
    ladder_only = activity_type in ("change_entitlement", "terminal_action")
    card = DECLINE if ladder_only else "succeed"  # a retry that would succeed must still not charge
    sub, state, answer = await run_race(
        tenv, settings, store, new_sub, f"race_{activity_type}", activity_type, "before", decline_class, card
    )

    assert (state.outcome, state.reason) == ("recovered", "paid_out_of_band")
    assert (answer.status, answer.outcome) == ("recovered", "recovered")
    if activity_type == "send_step_email":
        assert mailbox.steps() == []  # the day-0 notice never went out
    if activity_type == "retry_payment":
        assert charges(store, sub) == []  # no charge after the payment
    if activity_type == "change_entitlement":
        assert ledger(store, sub, "dunning.consequence_changed") == []
    assert cancels(store, sub) == []
    assert ledger(store, sub, "dunning.exhausted") == [] and ledger(store, sub, "bad_debt.entered") == []
    ent = entitlement_of(store, sub)
    assert ent is not None and (ent.status, ent.entitlement, ent.requires_attention) == ("active", "full", False)


async def test_a_payment_while_the_cancel_runs_is_recovered_after_cancel_never_exhausted(
    tenv, new_sub, store, settings, mailbox
):
    sub, state, answer = await run_race(
        tenv, settings, store, new_sub, "race_cancel_after", "terminal_action", "after", "soft", DECLINE
    )

    assert len(cancels(store, sub)) == 1  # the cancel had run: it is not undone, nor repeated
    assert state.outcome == "recovered_after_cancel" and state.reason == "paid_out_of_band"
    assert (answer.status, answer.outcome) == ("recovered_after_cancel", "recovered_after_cancel")
    assert len(ledger(store, sub, "dunning.recovered_after_cancel")) == 1
    assert ledger(store, sub, "dunning.recovered") == []
    ent = entitlement_of(store, sub)
    assert ent is not None and ent.last_outcome == "recovered_after_cancel"
    assert ent.requires_attention and "reactivat" in (ent.message or "")


@pytest.mark.parametrize("phase", ["before", "after"])
async def test_a_payment_while_the_exhausted_end_is_recorded_is_recovered_after_cancel(
    tenv, new_sub, store, settings, mailbox, phase
):
    """The end was decided `exhausted` (the cancel ran) and its record is being written
    when the payment lands: before the end's transaction, or after it while the run is
    still open. Either way: one cancel, and the payment is recorded for this campaign."""
    sub, state, answer = await run_race(
        tenv, settings, store, new_sub, f"race_end_{phase}", "finish_campaign", phase, "soft", DECLINE
    )

    assert len(cancels(store, sub)) == 1
    assert (answer.status, answer.outcome) == ("recovered_after_cancel", "recovered_after_cancel")
    assert state.outcome == "recovered_after_cancel" and state.reason == "paid_out_of_band"
    assert len(ledger(store, sub, "dunning.exhausted")) == 1
    assert len(ledger(store, sub, "dunning.recovered_after_cancel")) == 1 and ledger(store, sub, "dunning.recovered") == []
    ent = entitlement_of(store, sub)
    assert ent is not None and (ent.status, ent.entitlement, ent.last_outcome) == ("canceled", "canceled", "recovered_after_cancel")


async def test_a_payment_after_the_exhausted_campaign_ended_is_recorded_for_that_campaign(
    tenv, new_sub, dunning, store, mailbox
):
    sub, cus = new_sub("late_pay"), "cus_late"
    fake_state.set_card(store.engine, sub, DECLINE)
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign(sub, cus, "late@example.com", anchor, decline_class="soft")
    assert (await handle.result()).outcome == "exhausted"
    assert len(cancels(store, sub)) == 1

    answer = await dunning.payment_recovered(sub, "paid_out_of_band", idempotency_key="late_1")
    assert (answer.status, answer.outcome) == ("recovered_after_cancel", "recovered_after_cancel")
    assert answer.campaign_started_at == anchor  # the campaign the payment was recorded for
    again = await dunning.payment_recovered(sub, "paid_out_of_band", idempotency_key="late_1")
    assert (again.status, again.duplicate) == ("recovered_after_cancel", True)
    state = await dunning.status(sub)
    assert (state.outcome, state.campaign_started_at, state.stage) == ("recovered_after_cancel", anchor, "recovered_after_cancel")
    (late,) = ledger(store, sub, "dunning.recovered_after_cancel")
    assert late.campaign_started_at == anchor and late.data["reason"] == "paid_out_of_band"
    assert len(ledger(store, sub, "dunning.exhausted")) == 1 and len(cancels(store, sub)) == 1
    third = await dunning.payment_recovered(sub, "payment_succeeded")  # a new payment: the truth, nothing new
    assert (third.status, third.outcome) == ("already_ended", "recovered_after_cancel")
    assert len(ledger(store, sub, "dunning.recovered_after_cancel")) == 1


async def test_a_transient_failure_at_the_end_never_leaves_the_entitlement_restricted(
    tenv, new_sub, store, settings, mailbox
):
    """Issue 7: one transient failure of the entitlement write inside the end made the
    activity retry, and the retry found the end half-written and never restored the
    entitlement. Now the end is one transaction: all of it, or none and a retry."""
    settings = settings.model_copy(
        update={"campaign": settings.campaign.model_copy(update={"consequences": [
            ConsequenceRule(level="limited", min_days=2), ConsequenceRule(level="full")]})}
    )  # fmt: skip
    sub, cus = new_sub("end_fail"), "cus_end_fail"
    fake_state.set_card(store.engine, sub, DECLINE)
    failed: list[str] = []

    def fail_once(conn, cursor, statement, params, context, executemany):
        if not failed and statement.lstrip().upper().startswith("UPDATE SUBSCRIPTIONS SET ENTITLEMENT"):
            failed.append(statement)
            raise RuntimeError("injected: connection lost during the entitlement write")

    async with running_worker(tenv, settings, store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign(sub, cus, "ef@example.com", anchor, decline_class="soft")
        await tenv.sleep(3 * DAY)
        assert entitlement_of(store, sub).entitlement == "limited"  # type: ignore[union-attr]
        sa_event.listen(store.engine, "before_cursor_execute", fail_once)
        try:
            answer = await dunning.payment_recovered(sub, "paid_out_of_band")
            state = await handle.result()
        finally:
            sa_event.remove(store.engine, "before_cursor_execute", fail_once)

    assert failed, "the injected failure never fired"
    assert (answer.status, state.outcome, state.entitlement) == ("recovered", "recovered", "full")
    ent = entitlement_of(store, sub)
    assert ent is not None and (ent.entitlement, ent.status, ent.requires_attention) == ("full", "active", False)
    assert len(ledger(store, sub, "dunning.recovered")) == 1


@pytest.fixture
def settings(settings):
    return settings


__all__ = ["without_engine_retries"]
