"""DunningCampaign: one durable campaign per failing subscription.

One run is one campaign identity (subscription_id + campaign_started_at = the anchor).
It sleeps on durable timers between actions — emails, engine-driven payment retries,
consequence changes — as `dunning.journey` decides, is woken at once by signals,
re-checks the subscription before every action (the cancel-guard), and writes every
outcome through activities. No I/O and no clock here: `workflow.now()`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from dunning import consequences, journey
    from dunning.contracts import (
        BillingEvent,
        CampaignEnd,
        CampaignInput,
        CampaignPlan,
        CampaignState,
        EntitlementChange,
        GuardRequest,
        GuardResult,
        NextStep,
        OutboundEvent,
        RetryOutcome,
        RetryRecord,
        RetryRequest,
        StepOutcome,
        StepRequest,
        TerminalRequest,
    )
    from worker import search_attributes as sa

WORKFLOW_NAME = "DunningCampaign"
# Patch for campaigns started before retries, consequences and outbound events existed:
# their histories replay without those commands.
V2 = "retries-consequences-outbound"
# Transient failures (SMTP down, database locked, provider 5xx) retry with backoff,
# forever: an action is delayed, never lost. Non-retryable errors become a state.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5))
ACTIVITY = {"start_to_close_timeout": timedelta(seconds=60), "retry_policy": RETRY}
# A host app that is down for long must not hold the campaign: bounded, then recorded.
OUTBOUND = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=2), maximum_attempts=10),
}


def workflow_id(subscription_id: str) -> str:
    return f"dunning-{subscription_id}"


@workflow.defn(name=WORKFLOW_NAME)
class DunningCampaign:
    @workflow.init
    def __init__(self, inp: CampaignInput) -> None:
        self._inp = inp
        self._state = CampaignState(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            stage="starting",
            decline_class=inp.decline_class,
        )
        self._situation = journey.Situation(
            decline_class=inp.decline_class or "unknown", amount_due=inp.amount_due
        )
        self._invoice_id = inp.invoice_id
        self._end: tuple[str, str] | None = None  # (outcome, reason) once decided
        self._changed = False  # a signal changed the situation: re-plan

    # --- signals and queries -----------------------------------------------------------
    @workflow.signal
    def payment_recovered(self, reason: str = "payment recovered") -> None:
        if self._end is None:
            self._end = ("recovered", reason or "payment recovered")

    @workflow.signal
    def resolve(self, reason: str) -> None:
        """Ended without payment: invoice voided or uncollectible, subscription cancelled."""
        if self._end is None:
            self._end = ("resolved", reason or "resolved")

    @workflow.signal
    def billing_event(self, event: BillingEvent) -> None:
        """A later billing event for this subscription (ids and bounded values only)."""
        self._state.last_event = event.kind.value if event.kind else event.event_type
        if event.attempt_count is not None:
            self._state.provider_attempts = event.attempt_count
        if event.invoice_id:
            self._invoice_id = event.invoice_id
        self._observe(journey.observe(self._situation, event))

    @workflow.query
    def state(self) -> CampaignState:
        return self._state

    # --- the campaign ----------------------------------------------------------------
    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignState:
        anchor = inp.failed_at
        v2 = workflow.patched(V2)
        plan: CampaignPlan = await workflow.execute_activity(
            "begin_campaign", args=[inp, workflow.now()], result_type=CampaignPlan, **ACTIVITY
        )
        self._plan = plan
        self._stage("pending")
        if v2:
            await self._emit("campaign_started", {"provider": inp.provider})
        handled: set[str] = set()
        while self._end is None:
            self._changed = False
            due = journey.next_action(plan, anchor, workflow.now(), handled, self._situation)
            if isinstance(due, journey.Done):  # pragma: no cover - exhaust always ends first
                break
            self._state.next_step = NextStep(key=due.key, kind=due.kind, at=due.at)
            workflow.set_current_details(self._details(journey.describe(due)))
            if due.delay > timedelta(0):
                await self._sleep(due.delay)
            if self._end is not None:
                break
            if self._changed:  # a billing event changed what is due: plan again
                continue
            guard: GuardResult = await workflow.execute_activity(
                "check_campaign_guard",
                GuardRequest(subscription_id=inp.subscription_id, campaign_started_at=anchor),
                result_type=GuardResult,
                **ACTIVITY,
            )
            if not guard.proceed:
                self._end = (guard.outcome if v2 else "recovered", f"guard: {guard.reason}")
                break
            if v2 and self._end is not None:
                break  # recovered or resolved while the guard ran: no charge, no cancel, no email
            handled.update(due.skipped)
            if due.kind == "email":  # skipped keys come from the due action's own lane
                self._state.steps_skipped.extend(due.skipped)
            if due.kind == journey.EXHAUST:
                if v2:
                    await self._terminal(inp)
                self._end = ("exhausted", "grace period ended without payment")
            elif due.kind == "retry":
                await self._retry(inp, due)
            elif due.kind == "consequence":
                await self._consequence(inp, due)
            else:
                await self._send(inp, plan, due)
            handled.add(due.key)
        return await self._finish(inp, v2)

    async def _sleep(self, delay: timedelta) -> None:
        try:
            await workflow.wait_condition(lambda: self._end is not None or self._changed, timeout=delay)
        except TimeoutError:
            pass

    def _observe(self, situation: journey.Situation) -> None:
        if situation == self._situation:
            return
        if situation.decline_class != self._situation.decline_class:
            self._state.decline_class = situation.decline_class
        self._situation = situation
        self._changed = True  # what is due may have changed: plan again

    async def _send(self, inp: CampaignInput, plan: CampaignPlan, due: journey.Due) -> None:
        req = StepRequest(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            step_key=due.key,
            template=due.detail,
            due_at=workflow.now(),
            grace_ends_at=journey.boundary(inp.failed_at, plan.grace_days, plan.day_seconds),
        )
        try:
            outcome: StepOutcome = await workflow.execute_activity(
                "send_step_email", req, result_type=StepOutcome, **ACTIVITY
            )
        except ActivityError as err:  # non-retryable (no email address, 5xx): a visible state
            workflow.logger.error("step %s failed: %s", due.key, err.cause)
            self._state.steps_failed.append(due.key)
            return
        if outcome.status == "unconfirmed":
            self._state.steps_unconfirmed.append(due.key)
        else:
            self._state.steps_sent.append(due.key)
        self._stage(due.key)

    async def _retry(self, inp: CampaignInput, due: journey.Due) -> None:
        req = RetryRequest(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            retry_key=due.key,
            provider=inp.provider,
            invoice_id=self._invoice_id,
            at=workflow.now(),
        )
        try:
            outcome: RetryOutcome = await workflow.execute_activity(
                "retry_payment", req, result_type=RetryOutcome, **ACTIVITY
            )
        except ActivityError as err:  # e.g. provider refused our credentials: visible
            workflow.logger.error("retry %s failed: %s", due.key, err.cause)
            self._state.retries.append(RetryRecord(key=due.key, at=workflow.now(), outcome="error"))
            return
        self._state.retries.append(
            RetryRecord(key=due.key, at=workflow.now(), outcome=outcome.status, decline_class=outcome.decline_class)
        )
        self._situation = replace(self._situation, last_retry_at=workflow.now())  # not a re-plan trigger
        if outcome.status == "succeeded":
            self._end = ("recovered", f"payment retry {due.key} succeeded")
        elif outcome.decline_class:
            self._observe(replace(self._situation, decline_class=outcome.decline_class))

    async def _consequence(self, inp: CampaignInput, due: journey.Due) -> None:
        previous = self._state.entitlement
        await workflow.execute_activity(
            "change_entitlement",
            EntitlementChange(
                subscription_id=inp.subscription_id,
                customer_id=inp.customer_id,
                campaign_started_at=inp.failed_at,
                key=due.key,
                level=due.detail,
                previous=previous,
                at=workflow.now(),
            ),
            **ACTIVITY,
        )
        self._state.entitlement = due.detail
        await self._emit("consequence_changed", {"key": due.key, "level": due.detail, "previous": previous})

    async def _terminal(self, inp: CampaignInput) -> None:
        done: str = await workflow.execute_activity(
            "terminal_action",
            TerminalRequest(
                subscription_id=inp.subscription_id,
                customer_id=inp.customer_id,
                campaign_started_at=inp.failed_at,
                provider=inp.provider,
                invoice_id=self._invoice_id,
                action=self._plan.on_exhaustion,
            ),
            result_type=str,
            **ACTIVITY,
        )
        self._state.terminal_action = done

    async def _finish(self, inp: CampaignInput, v2: bool) -> CampaignState:
        outcome, reason = self._end or ("exhausted", "")
        status, entitlement = consequences.end_state(outcome, reason, self._plan.on_exhaustion)
        await workflow.execute_activity(
            "finish_campaign",
            CampaignEnd(
                subscription_id=inp.subscription_id,
                customer_id=inp.customer_id,
                campaign_started_at=inp.failed_at,
                outcome=outcome,
                reason=reason,
                at=workflow.now(),
                status=status,
                entitlement=entitlement if v2 else None,
                decline_class=self._state.decline_class,
                plan_id=inp.plan_id,
            ),
            **ACTIVITY,
        )
        self._state.outcome = outcome
        self._state.reason = reason
        self._state.next_step = None
        self._state.ended_at = workflow.now()
        if v2:
            self._state.entitlement = entitlement
            await self._emit(outcome, {"reason": reason[:200], "entitlement": entitlement})
        self._stage(outcome)
        workflow.set_current_details(f"Campaign ended {outcome}: {reason}.")
        return self._state

    async def _emit(self, type_: str, data: dict) -> None:
        event = OutboundEvent(
            type=type_,
            subscription_id=self._inp.subscription_id,
            customer_id=self._inp.customer_id,
            campaign_started_at=self._inp.failed_at,
            occurred_at=workflow.now(),
            data=data,
        )
        try:
            await workflow.execute_activity("emit_outbound_event", event, result_type=int, **OUTBOUND)
        except ActivityError as err:  # bounded: recorded, the campaign goes on
            workflow.logger.error("outbound %s not delivered: %s", type_, err.cause)

    def _details(self, text: str) -> str:
        """Current details for the UI: what happens next, and anything ops must look at."""
        if self._state.steps_unconfirmed:
            text += f"\nUNCONFIRMED (claimed, send not confirmed; not resent): {', '.join(self._state.steps_unconfirmed)}"
        if self._state.steps_failed:
            text += f"\nFAILED (not sent): {', '.join(self._state.steps_failed)}"
        return text

    def _stage(self, stage: str) -> None:
        self._state.stage = stage
        workflow.upsert_search_attributes([sa.STAGE.value_set(stage)])
