"""DunningCampaign: one durable campaign per failing subscription.

One run is one campaign identity (subscription_id + campaign_started_at = the anchor).
It sleeps on durable timers between steps, is woken at once by `payment_recovered`,
re-checks the subscription before every action (the cancel-guard), and writes every
outcome to the ledger through activities. No I/O and no clock here: `workflow.now()`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from dunning import journey
    from dunning.contracts import (
        CampaignEnd,
        CampaignInput,
        CampaignPlan,
        CampaignState,
        BillingEvent,
        GuardRequest,
        GuardResult,
        NextStep,
        StepOutcome,
        StepRequest,
    )
    from worker import search_attributes as sa

WORKFLOW_NAME = "DunningCampaign"
# Transient failures (SMTP down, database locked) retry with backoff, forever: a step
# is delayed, never lost. Non-retryable errors surface as a state and in the UI.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5))
ACTIVITY = {"start_to_close_timeout": timedelta(seconds=60), "retry_policy": RETRY}


def workflow_id(subscription_id: str) -> str:
    return f"dunning-{subscription_id}"


@workflow.defn(name=WORKFLOW_NAME)
class DunningCampaign:
    @workflow.init
    def __init__(self, inp: CampaignInput) -> None:
        self._state = CampaignState(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            stage="starting",
        )
        self._end: tuple[str, str] | None = None  # (outcome, reason) once decided

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
        if event.decline_class:
            self._state.decline_class = event.decline_class
        if event.attempt_count is not None:
            self._state.provider_attempts = event.attempt_count

    @workflow.query
    def state(self) -> CampaignState:
        return self._state

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignState:
        anchor = inp.failed_at
        plan: CampaignPlan = await workflow.execute_activity(
            "begin_campaign", args=[inp, workflow.now()], result_type=CampaignPlan, **ACTIVITY
        )
        self._stage("pending")
        handled: set[str] = set()
        while self._end is None:
            due = journey.next_action(plan, anchor, workflow.now(), handled)
            if isinstance(due, journey.Done):  # pragma: no cover - exhaust always ends first
                break
            self._state.next_step = NextStep(key=due.key, kind=due.kind, at=due.at)
            workflow.set_current_details(journey.describe(due))
            if due.delay > timedelta(0) and await self._woken_by_signal(due.delay):
                break
            if self._end is not None:
                break
            guard: GuardResult = await workflow.execute_activity(
                "check_campaign_guard",
                GuardRequest(subscription_id=inp.subscription_id, campaign_started_at=anchor),
                result_type=GuardResult,
                **ACTIVITY,
            )
            if not guard.proceed:
                self._end = ("recovered", f"guard: {guard.reason}")
                break
            if due.kind == journey.EXHAUST:
                self._end = ("exhausted", "grace period ended without payment")
                break
            handled.update(due.skipped)
            self._state.steps_skipped.extend(due.skipped)
            await self._send(inp, plan, due)
            handled.add(due.key)
        return await self._finish(inp)

    async def _woken_by_signal(self, delay: timedelta) -> bool:
        try:
            await workflow.wait_condition(lambda: self._end is not None, timeout=delay)
            return True
        except TimeoutError:
            return False

    async def _send(self, inp: CampaignInput, plan: CampaignPlan, due: journey.Due) -> None:
        step = next(s for s in plan.steps if s.key == due.key)
        req = StepRequest(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            step_key=step.key,
            template=step.template,
            due_at=workflow.now(),
            grace_ends_at=journey.boundary(inp.failed_at, plan.grace_days, plan.day_seconds),
        )
        try:
            outcome: StepOutcome = await workflow.execute_activity(
                "send_step_email", req, result_type=StepOutcome, **ACTIVITY
            )
        except ActivityError as err:  # non-retryable (no email address, 5xx): a visible state
            workflow.logger.error("step %s failed: %s", step.key, err.cause)
            self._state.steps_failed.append(step.key)
            return
        if outcome.status == "unconfirmed":
            self._state.steps_unconfirmed.append(step.key)
        else:
            self._state.steps_sent.append(step.key)
        self._stage(step.key)

    async def _finish(self, inp: CampaignInput) -> CampaignState:
        outcome, reason = self._end or ("exhausted", "")
        await workflow.execute_activity(
            "finish_campaign",
            CampaignEnd(
                subscription_id=inp.subscription_id,
                customer_id=inp.customer_id,
                campaign_started_at=inp.failed_at,
                outcome=outcome,
                reason=reason,
                at=workflow.now(),
            ),
            **ACTIVITY,
        )
        self._state.outcome = outcome
        self._state.reason = reason
        self._state.next_step = None
        self._state.ended_at = workflow.now()
        self._stage(outcome)
        workflow.set_current_details(f"Campaign ended {outcome}: {reason}.")
        return self._state

    def _stage(self, stage: str) -> None:
        self._state.stage = stage
        workflow.upsert_search_attributes([sa.STAGE.value_set(stage)])
