"""DunningCampaign: one durable campaign per failing subscription.

One run is one campaign identity (subscription_id + campaign_started_at = the anchor).
It sleeps on durable timers between actions — emails, engine-driven payment retries,
consequence changes — as `dunning.journey` decides, is woken at once by messages, and does
every effect through an activity that checks, in the same transaction as its claim, that
the subscription is still past_due with this anchor (a stale effect is `superseded`: the
campaign ends, nothing is done). Which end wins is `dunning.ending.winner`.

Messages: `recover` (Update: the payment service learns what really happened),
`payment_recovered` and `resolve` (signals, fire-and-forget), `billing_event` (signal) and
`attach` (Update, with start: the dispatcher learns the running campaign's anchor).
No I/O and no clock here: `workflow.now()`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.campaign import CampaignActivities
    from activities.outbound import OutboundActivities
    from activities.payments import PaymentActivities
    from dunning import ending, journey, stage_names
    from dunning.contracts import (
        AttachRequest,
        AttachResult,
        BillingEvent,
        CampaignEnd,
        CampaignInput,
        CampaignPlan,
        CampaignState,
        EntitlementChange,
        NextStep,
        OutboundEvent,
        RecoverRequest,
        RecoverResult,
        Resolution,
        RetryRecord,
        RetryRequest,
        ShadowAction,
        SkippedActions,
        StepRequest,
        Superseded,
        TerminalRequest,
    )
    from worker import search_attributes as sa

WORKFLOW_NAME = "DunningCampaign"
# Transient failures (SMTP down, database locked, provider 5xx) retry with backoff,
# forever: an action is delayed, never lost. Non-retryable errors become a state.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5))
TIMEOUT = timedelta(seconds=60)
# Effects that talk to SMTP or a provider heartbeat every second: a dead worker's attempt
# is retried within seconds, and the retry repeats the effect the far side dedupes.
HEARTBEAT = timedelta(seconds=5)
NEEDS_ATTENTION = "needs_attention"
# Changes to the commands a run issues go behind a patch (see tests/test_replay.py).
PATCH_OUTBOX = "outbox-in-store"  # outbound events are enqueued by the store's transactions
PATCH_SKIPS = "skips-in-ledger"  # skipped actions are recorded in the ledger
PATCH_REPLAN = "replan-after-late-wake"  # a timer that fired late (an outage): plan again
PATCH_OUTCOME = "outcome-search-attribute"  # the end is upserted as DunningOutcome
# A run started with `shape` >= 2 (not a patch: a patch marker costs an event and an upsert
# of TemporalChangeVersion): bookkeeping that only touches the store (begin, consequence,
# skips, shadow, finish) runs as local activities, with no task round trip through the
# server; the end's stage and outcome are one upsert; every patch above is in force
# without a marker of its own.
LEAN_SHAPE = 2
# A host app that is down for long must not hold the campaign: bounded, then recorded.
OUTBOUND_TIMEOUT = timedelta(seconds=30)
OUTBOUND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=2), maximum_attempts=10)
SAME_ANCHOR = timedelta(seconds=1)
EXHAUSTED_REASON = "grace period ended without payment"


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
        self._situation = journey.Situation(decline_class=inp.decline_class or "unknown", amount_due=inp.amount_due)
        self._invoice_id = inp.invoice_id
        self._plan: CampaignPlan | None = None
        self._claims: list[ending.Claim] = []  # candidate ends, as they arrived
        self._terminal_ran = False
        self._final: ending.End | None = None  # decided once the loop stops
        self._recorded = False  # the end is in the store: nothing can change it now
        self._changed = False  # a billing event changed the situation: plan again
        self._attention = False  # a permanent failure: DunningStage stays needs_attention
        self._first_sent_at: datetime | None = None  # when this campaign's first email went out
        self._lean = inp.shape >= LEAN_SHAPE
        if inp.event is not None:  # started with its failure (the dispatcher's plain start)
            self.billing_event(inp.event)

    # --- messages --------------------------------------------------------------------
    def _claim(self, kind: ending.ClaimKind, reason: str, resolution: str = "", inferred: bool = False) -> None:
        self._claims.append(ending.Claim(kind, workflow.now(), reason[:200], resolution, inferred))

    @workflow.signal
    def payment_recovered(self, reason: str = "payment recovered") -> None:
        self._claim(ending.PAID, reason or "payment recovered")

    @workflow.signal
    def resolve(self, resolution: Resolution) -> None:
        """Ended without payment: invoice voided or uncollectible, subscription cancelled."""
        self._claim(ending.RESOLVED, resolution.reason or "resolved", resolution.kind)

    @workflow.signal
    def billing_event(self, event: BillingEvent) -> None:
        """A later billing event for this subscription (ids and bounded values only)."""
        self._state.last_event = event.kind.value if event.kind else event.event_type
        if event.attempt_count is not None:
            self._state.provider_attempts = event.attempt_count
        if event.invoice_id:
            self._invoice_id = event.invoice_id
        self._observe(journey.observe(self._situation, event))

    @workflow.update
    def attach(self, req: AttachRequest) -> AttachResult:
        """The failure that (re)starts this subscription's campaign: applied only when it
        is this campaign's anchor; the answer names the running campaign's anchor."""
        applied = abs(req.anchor - self._inp.failed_at) < SAME_ANCHOR
        if applied:
            self.billing_event(req.event)
        return AttachResult(campaign_started_at=self._inp.failed_at, applied=applied)

    @workflow.update
    async def recover(self, req: RecoverRequest) -> RecoverResult:
        """The payment came in: end the campaign and answer with what it really did."""
        self._claim(ending.PAID, req.reason or "payment recovered")
        await workflow.wait_condition(lambda: self._recorded and not self._late_pending())
        outcome = self._state.outcome
        status = outcome if outcome in ("recovered", "recovered_after_cancel") else "already_ended"
        return RecoverResult(
            status=status,  # type: ignore[arg-type]
            outcome=outcome,
            subscription_id=self._inp.subscription_id,
            campaign_started_at=self._inp.failed_at,
        )

    @recover.validator
    def _validate_recover(self, req: RecoverRequest) -> None:
        if "@" in req.reason:
            raise ValueError("reason must not carry an email address (ids and words only)")
        if self._recorded and not self._late_possible():
            raise ValueError(f"campaign already ended {self._state.outcome}")

    @workflow.query
    def state(self) -> CampaignState:
        return self._state

    # --- the campaign ----------------------------------------------------------------
    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignState:
        if inp.after_cancel:
            return await self._after_cancel(inp)
        anchor = inp.failed_at
        plan = await self._bookkeeping(CampaignActivities.begin_campaign, inp, workflow.now())
        self._plan = plan
        self._stage("pending")
        await self._emit("campaign_started", {"provider": inp.provider})
        handled: set[str] = set()
        while not self._claims:
            self._changed = False
            # catch-up rules read the clock less the engine's own lateness (journey.planning_now)
            due = journey.next_action(plan, anchor, journey.planning_now(plan, workflow.now()), handled, self._situation)
            if isinstance(due, journey.Done):  # pragma: no cover - exhaust always ends first
                break
            self._state.next_step = NextStep(key=due.key, kind=due.kind, at=due.at)
            workflow.set_current_details(self._details(self._next_words(due)))
            if due.at > workflow.now():
                await self._sleep(due.at - workflow.now())
            if self._claims:
                break
            if self._changed:  # a billing event changed what is due: plan again
                continue
            if workflow.now() - due.at > timedelta(seconds=plan.late_tolerance_seconds) and self._patched(PATCH_REPLAN):
                # woke late (worker or Temporal down): more may be due than what we slept for
                now = journey.planning_now(plan, workflow.now())
                now_due = journey.next_action(plan, anchor, now, handled, self._situation)
                if isinstance(now_due, journey.Due) and now_due.at <= workflow.now():
                    due = now_due
            handled.update(due.skipped)
            if due.kind == "email":  # skipped keys come from the due action's own lane
                self._state.steps_skipped.extend(due.skipped)
            await self._record_skipped(inp, list(due.skipped), journey.SKIP_SUPERSEDED)
            skip = journey.skip_reason(due, workflow.now(), plan, anchor)
            if skip is not None:  # late, and sending now would tell the customer something untrue
                self._state.steps_skipped.append(due.key)
                await self._record_skipped(inp, [due.key], skip)
            elif plan.mode == "shadow":  # record what would be done; do none of it
                await self._shadow(inp, plan, due)
            elif due.kind == journey.EXHAUST:
                await self._terminal(inp, plan)
            elif due.kind == "retry":
                await self._retry(inp, due)
            elif due.kind == "consequence":
                await self._consequence(inp, due)
            else:
                await self._send(inp, plan, due)
            handled.add(due.key)
        self._final = ending.winner(self._claims, self._terminal_ran) or ending.End("exhausted", EXHAUSTED_REASON)
        await self._finish(inp, self._final)
        return await self._settle(inp)

    async def _settle(self, inp: CampaignInput) -> CampaignState:
        """Before the run ends: a payment that reaches an exhausted end (a signal, or the
        `recover` Update, at any moment until the run closes) is recorded as
        `recovered_after_cancel`; then every handler has finished."""
        while True:
            await workflow.wait_condition(lambda: self._late_pending() or workflow.all_handlers_finished())
            if not self._late_pending():
                return self._state
            late = ending.winner(self._claims, terminal_ran=True)
            assert late is not None  # a payment is pending
            await self._finish(inp, late)

    async def _after_cancel(self, inp: CampaignInput) -> CampaignState:
        """A payment after the exhausted campaign begun at `inp.failed_at` was cancelled at
        the provider: record it for that identity, so the host can reactivate."""
        # the identity's plan (its ledger row exists)
        self._plan = await self._bookkeeping(CampaignActivities.begin_campaign, inp, workflow.now())
        self._final = ending.End("exhausted", EXHAUSTED_REASON)
        self._recorded = True
        self._state.outcome = "exhausted"
        if not any(c.kind == ending.PAID for c in self._claims):  # started without a message
            self._claim(ending.PAID, "payment after the terminal action")
        return await self._settle(inp)

    async def _record_skipped(self, inp: CampaignInput, keys: list[str], reason: str) -> None:
        if not keys or not self._patched(PATCH_SKIPS):
            return
        skipped = SkippedActions(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            keys=keys,
            reason=reason,
            at=workflow.now(),
        )
        await self._bookkeeping(CampaignActivities.record_skipped, skipped)

    def _needs_attention(self, what: str, err: ActivityError) -> None:
        """A permanent failure (recorded in the ledger by the activity): visible and
        filterable (DunningStage = needs_attention); the campaign goes on."""
        workflow.logger.error("%s failed permanently: %s", what, err.cause)
        self._attention = True
        self._stage(NEEDS_ATTENTION)

    def _late_possible(self) -> bool:
        return self._final is not None and self._final.outcome == "exhausted" and self._state.outcome == "exhausted"

    def _late_pending(self) -> bool:
        """A payment arrived after an exhausted end was decided and it is not recorded yet."""
        return self._late_possible() and any(c.kind == ending.PAID for c in self._claims)

    async def _sleep(self, delay: timedelta) -> None:
        try:
            await workflow.wait_condition(lambda: bool(self._claims) or self._changed, timeout=delay)
        except TimeoutError:
            pass

    def _observe(self, situation: journey.Situation) -> None:
        if situation == self._situation:
            return
        if situation.decline_class != self._situation.decline_class:
            self._state.decline_class = situation.decline_class
        self._situation = situation
        self._changed = True  # what is due may have changed: plan again

    def _superseded(self, sup: Superseded | None) -> None:
        """An effect found the campaign is no longer the subscription's: end it so."""
        if sup is None:  # pragma: no cover - superseded always says why
            return
        kind: ending.ClaimKind = ending.PAID if sup.outcome == "recovered" else ending.RESOLVED
        self._claim(kind, f"superseded: {sup.reason}", sup.kind, inferred=True)

    async def _send(self, inp: CampaignInput, plan: CampaignPlan, due: journey.Due) -> None:
        req = StepRequest(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            step_key=due.key,
            template=due.detail,
            due_at=workflow.now(),
            grace_ends_at=journey.boundary(inp.failed_at, plan.grace_days, plan.day_seconds),
            scheduled_at=due.at,
            first_notice_at=self._first_sent_at,
        )
        try:
            outcome = await workflow.execute_activity_method(
                CampaignActivities.send_step_email,
                req,
                start_to_close_timeout=TIMEOUT,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RETRY,
            )
        except ActivityError as err:  # non-retryable (no email address, 5xx, template): a visible state
            self._state.steps_failed.append(due.key)
            self._needs_attention(f"step {due.key}", err)
            return
        if outcome.status == "superseded":
            self._superseded(outcome.superseded)
            return
        if outcome.status == "unconfirmed":
            self._state.steps_unconfirmed.append(due.key)
        else:
            self._state.steps_sent.append(due.key)
            if self._first_sent_at is None:
                self._first_sent_at = workflow.now()
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
            scheduled_at=due.at,
        )
        try:
            outcome = await workflow.execute_activity_method(
                PaymentActivities.retry_payment,
                req,
                start_to_close_timeout=TIMEOUT,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RETRY,
            )
        except ActivityError as err:  # e.g. provider refused our credentials: visible
            self._state.retries.append(RetryRecord(key=due.key, at=workflow.now(), outcome="error"))
            self._needs_attention(f"retry {due.key}", err)
            return
        if outcome.status == "superseded":
            self._superseded(outcome.superseded)
            return
        self._state.retries.append(
            RetryRecord(key=due.key, at=workflow.now(), outcome=outcome.status, decline_class=outcome.decline_class)
        )
        self._situation = replace(self._situation, last_retry_at=workflow.now())  # not a re-plan trigger
        if outcome.status == "succeeded":
            self._claim(ending.PAID, f"payment retry {due.key} succeeded")
        elif outcome.decline_class:
            self._observe(replace(self._situation, decline_class=outcome.decline_class))

    async def _consequence(self, inp: CampaignInput, due: journey.Due) -> None:
        previous = self._state.entitlement
        change = EntitlementChange(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            key=due.key,
            level=due.detail,
            previous=previous,
            at=workflow.now(),
            scheduled_at=due.at,
        )
        outcome = await self._bookkeeping(CampaignActivities.change_entitlement, change)
        if outcome.status == "superseded":
            self._superseded(outcome.superseded)
            return
        self._state.entitlement = due.detail
        await self._emit("consequence_changed", {"key": due.key, "level": due.detail, "previous": previous})

    async def _terminal(self, inp: CampaignInput, plan: CampaignPlan) -> None:
        req = TerminalRequest(
            subscription_id=inp.subscription_id,
            customer_id=inp.customer_id,
            campaign_started_at=inp.failed_at,
            provider=inp.provider,
            invoice_id=self._invoice_id,
            action=plan.on_exhaustion,
        )
        try:
            outcome = await workflow.execute_activity_method(
                PaymentActivities.terminal_action,
                req,
                start_to_close_timeout=TIMEOUT,
                heartbeat_timeout=HEARTBEAT,
                retry_policy=RETRY,
            )
        except ActivityError as err:  # e.g. the provider answers 401: recorded, the campaign ends
            self._state.terminal_action = f"{plan.on_exhaustion}: failed"
            self._needs_attention("terminal action", err)
            self._claim(ending.EXHAUSTED, EXHAUSTED_REASON)
            return
        if outcome.status == "superseded":
            self._superseded(outcome.superseded)
            return
        self._state.terminal_action = outcome.detail
        self._terminal_ran = outcome.status == "done"
        self._claim(ending.EXHAUSTED, EXHAUSTED_REASON)

    async def _shadow(self, inp: CampaignInput, plan: CampaignPlan, due: journey.Due) -> None:
        """Shadow mode: the due action is recorded as `dunning.shadow_action`, not done. A
        charge is taken as declined (nothing was charged), so the timeline goes on as it
        would for a customer who does not pay; the exhaustion's terminal action is
        recorded and the campaign ends exhausted, having cancelled nothing."""
        kinds = {"retry": "charge", "consequence": "consequence", journey.EXHAUST: plan.on_exhaustion}
        action = ShadowAction(
            subscription_id=inp.subscription_id, customer_id=inp.customer_id, campaign_started_at=inp.failed_at,
            key=due.key, action=kinds.get(due.kind, "email"), detail=due.detail or "",  # type: ignore[arg-type]
            at=workflow.now(), scheduled_at=due.at,
        )  # fmt: skip
        outcome = await self._bookkeeping(CampaignActivities.record_shadow_action, action)
        if outcome.status == "superseded":
            self._superseded(outcome.superseded)
            return
        self._stage(f"shadow:{due.key}")
        if due.kind == "retry":
            self._state.retries.append(RetryRecord(key=due.key, at=workflow.now(), outcome="shadow"))
            self._situation = replace(self._situation, last_retry_at=workflow.now())
        elif due.kind == journey.EXHAUST:
            self._state.terminal_action = f"shadow: {plan.on_exhaustion}"
            self._claim(ending.EXHAUSTED, EXHAUSTED_REASON)
        elif due.kind != "consequence":
            self._state.steps_sent.append(f"shadow:{due.key}")
            if self._first_sent_at is None:
                self._first_sent_at = workflow.now()

    async def _finish(self, inp: CampaignInput, end: ending.End) -> None:
        plan = self._plan
        entitlement = await self._bookkeeping(
            CampaignActivities.finish_campaign,
            CampaignEnd(
                subscription_id=inp.subscription_id,
                customer_id=inp.customer_id,
                campaign_started_at=inp.failed_at,
                outcome=end.outcome,
                reason=end.reason,
                kind=end.resolution,
                at=workflow.now(),
                on_exhaustion=plan.on_exhaustion if plan else "none",
                decline_class=self._state.decline_class,
                plan_id=inp.plan_id,
                shadow=plan is not None and plan.mode == "shadow",
            ),
        )
        self._state.outcome = end.outcome
        self._state.reason = end.reason
        self._state.next_step = None
        self._state.ended_at = workflow.now()
        self._state.entitlement = entitlement
        self._recorded = True
        # how it ended (DunningOutcome), filterable even when the stage is needs_attention
        if self._lean:
            self._stage(end.outcome, [sa.OUTCOME.value_set(end.outcome)])
        else:
            self._stage(end.outcome)
            if workflow.patched(PATCH_OUTCOME):
                workflow.upsert_search_attributes([sa.OUTCOME.value_set(end.outcome)])
        workflow.set_current_details(self._details(self._ended_words(end)))
        await self._emit(end.outcome, {"reason": end.reason[:200], "entitlement": entitlement})

    def _ended_words(self, end: ending.End) -> str:
        """Current details once ended: the outcome in words (DunningOutcome holds the key)."""
        said = stage_names.outcome_words(end.outcome)
        head = f"Campaign ended {said}{'' if said == end.outcome else f' ({end.outcome})'}: {end.reason}."
        if end.outcome == "recovered_after_cancel":
            return (
                f"{head} The payment came after the subscription was ended at the provider; "
                "the host app should reactivate it."
            )
        if end.outcome == "exhausted" and self._state.terminal_action:
            head += f" Terminal action: {self._state.terminal_action}."
        if end.outcome != "recovered" and self._state.entitlement != "full":
            head += f" Entitlement: {self._state.entitlement}."
        return head

    def _words(self, key: str) -> str:
        """A stage or action key in words (dunning.stage_names), with this campaign's plan."""
        policy = self._plan.retry_policies.get(self._situation.decline_class) if self._plan else None
        return stage_names.words(
            key,
            retry_days=policy.days if policy else (),
            anchor=self._inp.failed_at,
            day_seconds=self._plan.day_seconds if self._plan else None,
        )

    def _next_words(self, due: journey.Due) -> str:
        if due.kind != "retry":
            return journey.describe(due)
        return f"Next: {self._words(due.key)}: charge the payment method at {due.at.strftime('%Y-%m-%d %H:%M:%S UTC')}."

    async def _emit(self, type_: str, data: dict) -> None:
        if self._plan is not None and not self._plan.outbound:
            return  # no receiver configured: no activity that does nothing
        if self._patched(PATCH_OUTBOX):
            return  # the store enqueued it in the transaction that wrote the fact
        event = OutboundEvent(
            type=type_,  # type: ignore[arg-type]
            subscription_id=self._inp.subscription_id,
            customer_id=self._inp.customer_id,
            campaign_started_at=self._inp.failed_at,
            occurred_at=workflow.now(),
            data=data,
        )
        try:
            await workflow.execute_activity_method(
                OutboundActivities.emit, event, start_to_close_timeout=OUTBOUND_TIMEOUT, retry_policy=OUTBOUND_RETRY
            )
        except ActivityError as err:  # bounded: recorded, the campaign goes on
            workflow.logger.error("outbound %s not delivered: %s", type_, err.cause)

    def _details(self, text: str) -> str:
        """Current details for the UI: the stage in words, what happens next (or how it
        ended), and anything ops must look at."""
        if not self._recorded:
            text = f"Stage: {self._words(self._state.stage)}.\n{text}"
        elif self._attention:
            text += "\nNEEDS ATTENTION: a permanent failure was recorded (DunningStage = needs_attention)."
        if self._state.steps_unconfirmed:
            text += f"\nUNCONFIRMED (claimed, result not confirmed; not repeated): {', '.join(self._state.steps_unconfirmed)}"
        if self._state.steps_failed:
            text += f"\nFAILED (not sent): {', '.join(self._state.steps_failed)}"
        return text

    def _stage(self, stage: str, also: list | None = None) -> None:
        """DunningStage (and `also`, other updates, in the same upsert)."""
        if self._attention:  # ops filter on it until someone looks: it is not overwritten
            stage = NEEDS_ATTENTION
        updates = list(also or [])
        if stage != self._state.stage:
            self._state.stage = stage
            updates.insert(0, sa.STAGE.value_set(stage))
        if updates:
            workflow.upsert_search_attributes(updates)

    def _patched(self, patch: str) -> bool:
        """A patch older than the lean shape: in force without its marker on a lean run."""
        return self._lean or workflow.patched(patch)

    async def _bookkeeping(self, method: Any, *args: Any) -> Any:
        """A store-only step: a local activity on a lean run, an activity before it."""
        if self._lean:
            return await workflow.execute_local_activity_method(
                method, args=args, start_to_close_timeout=TIMEOUT, retry_policy=RETRY
            )
        return await workflow.execute_activity_method(method, args=args, start_to_close_timeout=TIMEOUT, retry_policy=RETRY)
