"""Thin activities of the campaign workflow: each does one effect (database or SMTP).

Each effect claims its row in the same transaction that checks the campaign is still
the subscription's (dunning.store.campaign_writes); a stale one answers `superseded` and
does nothing. Database calls are synchronous SQLAlchemy and run in a thread so the
worker's event loop stays free. Retries are the workflow's retry policy: an SMTP or
database outage delays a step, it does not lose it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from jinja2 import TemplateError
from opentelemetry import metrics
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.attempt import attempt_token
from activities.campaign_log import campaign_event
from activities.heartbeat import heartbeating
from dunning import rollout
from dunning.config import Settings
from dunning.contracts import (
    CampaignEnd,
    CampaignInput,
    CampaignPlan,
    EffectOutcome,
    EntitlementChange,
    ShadowAction,
    ShadowOutcome,
    SkippedActions,
    StepOutcome,
    StepRequest,
    late_by,
)
from dunning.email.context import email_context
from dunning.email.message import build_message, domain_of, message_id_for
from dunning.email.render import render
from dunning.email.sender import SmtpError, send_message
from dunning.scrub import scrub
from dunning.store import campaign_writes, shadow
from dunning.store.store import Customer, Store

# extra SMTP sends of one step (same Message-ID) after an attempt whose result was unknown
RESENDS = metrics.get_meter("dunning.worker").create_counter(
    "dunning.email.resends", unit="{message}", description="Resends of a step whose earlier send was unconfirmed"
)


class Permanent(Exception):
    """Certainly not sent, and no retry will change that: a visible state, not a loop."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ClaimLost(Exception):
    pass


class CampaignActivities:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    @activity.defn(name="begin_campaign")
    async def begin_campaign(self, inp: CampaignInput, at: datetime) -> CampaignPlan:
        """Open the ledger and fix the plan into history. The projection (status, anchor)
        was written by the billing event that started the campaign, not here."""

        # the rollout gate is read here, once: its answer is in the history with the plan, so
        # changing the gate never changes a running campaign
        mode = rollout.campaign_mode(self.settings.rollout, inp.subscription_id, inp.customer_id)
        outbound = bool(self.settings.outbound_urls)
        await asyncio.to_thread(campaign_writes.begin_campaign, self.store, inp, at, outbound, mode == "shadow")
        campaign_event("started", inp.subscription_id, inp.failed_at, provider=inp.provider, mode=mode)
        return self.settings.plan(inp.provider).model_copy(update={"mode": mode})

    @activity.defn(name="send_step_email")
    async def send_step_email(self, req: StepRequest) -> StepOutcome:
        """Check and claim the step's row in one transaction, then send: at least once, with
        one Message-ID per (campaign identity, step). Never for a campaign that is no longer
        the subscription's. A claim an earlier (dead) attempt left unconfirmed is taken over
        and the step resent with the same Message-ID; an ambiguous SMTP result (timeout
        after MAIL FROM, cancellation mid-send) is never recorded as "not sent"."""
        s = self.settings
        message_id = message_id_for(req.subscription_id, req.campaign_started_at, req.step_key, domain_of(s.smtp_sender))
        token = attempt_token()
        started = req.campaign_started_at
        claim = await asyncio.to_thread(
            campaign_writes.claim_effect, self.store, req.subscription_id, started, req.step_key, message_id, token,
            datetime.now(UTC), take_over=True,
        )  # fmt: skip
        if claim.stale is not None:
            return StepOutcome(
                step_key=req.step_key, status="superseded", message_id=message_id, superseded=claim.stale
            )
        if claim.state == "sent":
            return StepOutcome(step_key=req.step_key, status="already_sent", message_id=message_id)
        if claim.taken_over:
            activity.logger.warning(
                "step %s of %s: an earlier attempt's send is unconfirmed; resending with the same Message-ID",
                req.step_key, req.subscription_id,
            )  # fmt: skip
        try:
            msg = await asyncio.to_thread(self._compose, req, message_id)
        except Permanent as err:
            await self._fail(req, token, err.kind, str(err))
            raise ApplicationError(str(err), type=err.kind, non_retryable=True) from None
        sends = 0

        async def before_data() -> None:
            nonlocal sends
            sends = await asyncio.to_thread(
                campaign_writes.count_send, self.store, req.subscription_id, started, req.step_key, token
            )
            if sends == 0:
                raise ClaimLost(f"step {req.step_key} of {req.subscription_id}: the claim passed to another attempt")
            if sends > 1:
                RESENDS.add(1, {"step": req.step_key})

        try:
            async with heartbeating():
                await send_message(
                    msg, host=s.smtp_host, port=s.smtp_port, username=s.smtp_username, password=s.smtp_password,
                    starttls=s.smtp_starttls, timeout=s.smtp_timeout,
                    # a server that answered too late last time gets longer (bounded)
                    data_timeout=s.smtp_timeout * 2 ** min(claim.sends, 3), before_data=before_data,
                )  # fmt: skip
        except ClaimLost as err:
            raise ApplicationError(str(err), type="ClaimLost") from None
        except SmtpError as err:
            if not err.ambiguous and sends:  # the server said no: this send did not happen
                await asyncio.to_thread(
                    campaign_writes.count_send, self.store, req.subscription_id, started, req.step_key, token, -1
                )
            if err.permanent and not err.ambiguous:
                await self._fail(req, token, "SmtpPermanent", str(err))
                raise ApplicationError(str(err), type="SmtpPermanent", non_retryable=True) from None
            # transient or ambiguous: the claim stays; the next attempt takes it over and resends
            raise ApplicationError(str(err), type="SmtpAmbiguous" if err.ambiguous else "SmtpTransient") from None
        # a cancellation or a crash here leaves the claim: the next attempt resends (same Message-ID)
        data: dict = {"sends": sends, **late_by(req.due_at, req.scheduled_at)}
        await asyncio.to_thread(
            self.store.mark_step_sent, req.subscription_id, req.customer_id, started, req.step_key, message_id,
            req.due_at, data=data,
        )  # fmt: skip
        campaign_event("step_sent", req.subscription_id, started, step=req.step_key, sends=sends)
        return StepOutcome(step_key=req.step_key, status="sent", message_id=message_id)

    async def _fail(self, req: StepRequest, token: str, kind: str, message: str) -> None:
        await asyncio.to_thread(
            campaign_writes.fail_effect, self.store, req.subscription_id, req.customer_id, req.campaign_started_at,
            req.step_key, token, kind, message, datetime.now(UTC),
        )  # fmt: skip

    def _compose(self, req: StepRequest, message_id: str):
        customer = self.store.get_customer(req.customer_id)
        if customer is None or not customer.email:
            raise Permanent("NoEmail", f"customer {req.customer_id} has no email address in the store")
        try:
            rendered = self._render(req, customer)
        except (TemplateError, ValueError) as err:  # TemplateNotFound is a ValueError
            raise Permanent("TemplateError", f"template {req.template!r}: {type(err).__name__}: {scrub(str(err))}") from err
        return build_message(
            sender=self.settings.smtp_sender,
            to=customer.email,
            rendered=rendered,
            message_id=message_id,
            headers={"X-Dunning-Subscription": req.subscription_id, "X-Dunning-Step": req.step_key},
        )

    def _render(self, req: StepRequest, customer: Customer):
        return render(self.settings.templates_dir, req.template, email_context(self.settings, self.store, req, customer))

    @activity.defn(name="change_entitlement")
    async def change_entitlement(self, change: EntitlementChange) -> EffectOutcome:
        """The campaign moves the subscription along the consequence ladder (checked and
        applied in one transaction)."""
        outbound = bool(self.settings.outbound_urls)
        stale = await asyncio.to_thread(campaign_writes.change_entitlement, self.store, change, outbound)
        if stale is not None:
            return EffectOutcome(status="superseded", superseded=stale)
        campaign_event("consequence", change.subscription_id, change.campaign_started_at, level=change.level,
                       previous=change.previous)  # fmt: skip
        return EffectOutcome(status="done", detail=change.level)

    @activity.defn(name="finish_campaign")
    async def finish_campaign(self, end: CampaignEnd) -> str:
        """The campaign's end in one idempotent transaction; returns the entitlement it leaves."""
        campaign_event("ended", end.subscription_id, end.campaign_started_at, outcome=end.outcome,
                       resolution=end.kind or None, shadow=end.shadow or None)  # fmt: skip
        if end.shadow:
            _, level = await asyncio.to_thread(shadow.finish, self.store, end)
            return level
        outbound = bool(self.settings.outbound_urls)
        _, level = await asyncio.to_thread(
            campaign_writes.finish_campaign, self.store, end, self.settings.day_seconds, outbound
        )
        return level

    @activity.defn(name="record_shadow_action")
    async def record_shadow_action(self, act: ShadowAction) -> ShadowOutcome:
        """A shadow campaign's action: recorded (while the campaign is still the
        subscription's), never performed."""
        stale = await asyncio.to_thread(shadow.record_action, self.store, act)
        if stale is not None:
            return ShadowOutcome(status="superseded", superseded=stale)
        campaign_event("shadow_action", act.subscription_id, act.campaign_started_at, step=act.key, action=act.action)
        return ShadowOutcome(status="recorded")

    @activity.defn(name="record_skipped")
    async def record_skipped(self, skipped: SkippedActions) -> None:
        """Due actions the campaign will not perform (an outage, a passed deadline): in the ledger."""
        await asyncio.to_thread(campaign_writes.record_skipped, self.store, skipped)

    def all(self) -> list:
        return [
            self.begin_campaign, self.send_step_email, self.change_entitlement, self.finish_campaign,
            self.record_skipped, self.record_shadow_action,
        ]  # fmt: skip
