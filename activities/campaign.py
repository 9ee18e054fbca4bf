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

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.attempt import attempt_token
from dunning.config import Settings
from dunning.contracts import (
    CampaignEnd,
    CampaignInput,
    CampaignPlan,
    EffectOutcome,
    EntitlementChange,
    StepOutcome,
    StepRequest,
)
from dunning.email.message import build_message, domain_of, message_id_for
from dunning.email.render import render
from dunning.email.sender import SmtpError, send_message
from dunning.store import campaign_writes
from dunning.store.store import Store


class CampaignActivities:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    @activity.defn(name="begin_campaign")
    async def begin_campaign(self, inp: CampaignInput, at: datetime) -> CampaignPlan:
        """Open the ledger and fix the plan into history. The projection (status, anchor)
        was written by the billing event that started the campaign, not here."""

        def write() -> None:
            self.store.record_event(
                "dunning.campaign_started",
                inp.subscription_id,
                inp.customer_id,
                inp.failed_at,
                occurred_at=at,
                data={"provider": inp.provider},
            )

        await asyncio.to_thread(write)
        return self.settings.plan(inp.provider)

    @activity.defn(name="send_step_email")
    async def send_step_email(self, req: StepRequest) -> StepOutcome:
        """Check and claim the step's row in one transaction, then send. Never sends a step
        twice for one identity, nor for a campaign that is no longer the subscription's."""
        message_id = message_id_for(
            req.subscription_id, req.campaign_started_at, req.step_key, domain_of(self.settings.smtp_sender)
        )
        token = attempt_token()
        claim = await asyncio.to_thread(
            campaign_writes.claim_effect,
            self.store,
            req.subscription_id,
            req.campaign_started_at,
            req.step_key,
            message_id,
            token,
            datetime.now(UTC),
        )
        state, owner = claim.state, claim.owner
        if claim.stale is not None:
            return StepOutcome(
                step_key=req.step_key, status="superseded", message_id=message_id, superseded=claim.stale
            )
        if state == "sent":
            return StepOutcome(step_key=req.step_key, status="already_sent", message_id=message_id)
        if owner != token:
            # An earlier attempt claimed it and never confirmed: it may or may not have
            # gone out. Resending blindly could email the customer twice.
            activity.logger.warning("step %s of %s unconfirmed (claimed by %s)", req.step_key, req.subscription_id, owner)
            return StepOutcome(step_key=req.step_key, status="unconfirmed", message_id=message_id)
        try:
            msg = await asyncio.to_thread(self._compose, req, message_id)
            s = self.settings
            await send_message(
                msg,
                host=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                starttls=s.smtp_starttls,
                timeout=s.smtp_timeout,
            )
        except BaseException as err:
            # Certainly not sent: free the claim so the next attempt may send.
            await asyncio.to_thread(
                self.store.release_claim, req.subscription_id, req.campaign_started_at, req.step_key, token
            )
            if isinstance(err, SmtpError) and err.permanent:
                raise ApplicationError(str(err), type="SmtpPermanent", non_retryable=True) from err
            raise
        await asyncio.to_thread(
            self.store.mark_step_sent,
            req.subscription_id,
            req.customer_id,
            req.campaign_started_at,
            req.step_key,
            message_id,
            req.due_at,
        )
        return StepOutcome(step_key=req.step_key, status="sent", message_id=message_id)

    def _compose(self, req: StepRequest, message_id: str):
        customer = self.store.get_customer(req.customer_id)
        if customer is None or not customer.email:
            raise ApplicationError(
                f"customer {req.customer_id} has no email address in the store", type="NoEmail", non_retryable=True
            )
        rendered = render(
            self.settings.templates_dir,
            req.template,
            {
                "customer_name": customer.name,
                "subscription_id": req.subscription_id,
                "step_key": req.step_key,
                "campaign_started_at": req.campaign_started_at,
                "update_payment_url": None,
                "grace_ends_at": req.grace_ends_at,
                "amount_due": None,
            },
        )
        return build_message(
            sender=self.settings.smtp_sender,
            to=customer.email,
            rendered=rendered,
            message_id=message_id,
            headers={"X-Dunning-Subscription": req.subscription_id, "X-Dunning-Step": req.step_key},
        )

    @activity.defn(name="change_entitlement")
    async def change_entitlement(self, change: EntitlementChange) -> EffectOutcome:
        """The campaign moves the subscription along the consequence ladder (checked and
        applied in one transaction)."""
        stale = await asyncio.to_thread(campaign_writes.change_entitlement, self.store, change)
        if stale is not None:
            return EffectOutcome(status="superseded", superseded=stale)
        return EffectOutcome(status="done", detail=change.level)

    @activity.defn(name="finish_campaign")
    async def finish_campaign(self, end: CampaignEnd) -> str:
        """The campaign's end in one idempotent transaction; returns the entitlement it leaves."""
        _, level = await asyncio.to_thread(campaign_writes.finish_campaign, self.store, end, self.settings.day_seconds)
        return level

    def all(self) -> list:
        return [self.begin_campaign, self.send_step_email, self.change_entitlement, self.finish_campaign]
