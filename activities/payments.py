"""Payment effects through the provider: an engine-driven retry, and the terminal action
on exhaustion. Each is claimed, in the same transaction that checks the subscription is
still past_due with this campaign's anchor, before the provider is called: a customer who
paid is never charged or cancelled afterwards, and a crash between the call and its
record never charges or cancels twice blindly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.attempt import attempt_token
from activities.campaign_log import campaign_event
from activities.heartbeat import heartbeating
from dunning.config import ConfigError, Settings
from dunning.contracts import EffectOutcome, RetryOutcome, RetryRequest, TerminalRequest, late_by
from dunning.providers.actions import ProviderError, provider_for
from dunning.scrub import scrub
from dunning.store import campaign_writes
from dunning.store.store import EffectClaim, Store

T = TypeVar("T")


def idempotency_key(subscription_id: str, campaign_started_at: datetime, key: str) -> str:
    return f"dunning:{subscription_id}:{int(campaign_started_at.timestamp() * 1e6)}:{key}"


class PaymentActivities:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def _claim(self, sub: str, started: datetime, key: str, idem: str, token: str) -> EffectClaim:
        return campaign_writes.claim_effect(self.store, sub, started, key, idem, token, datetime.now(UTC))

    @activity.defn(name="retry_payment")
    async def retry_payment(self, req: RetryRequest) -> RetryOutcome:
        idem = idempotency_key(req.subscription_id, req.campaign_started_at, req.retry_key)
        token = attempt_token()

        def run() -> RetryOutcome:
            claim = self._claim(req.subscription_id, req.campaign_started_at, req.retry_key, idem, token)
            if claim.stale is not None:  # paid or resolved meanwhile: no charge
                return RetryOutcome(retry_key=req.retry_key, status="superseded", superseded=claim.stale)
            if claim.state == "sent" or claim.owner != token:
                # Done before (return its recorded result), or claimed by an attempt that
                # died mid-call: never charge again blindly.
                for e in self.store.events(req.subscription_id, req.campaign_started_at):
                    if e.type == "dunning.retry_attempted" and e.step_key == req.retry_key:
                        fields = ("status", "decline_code", "decline_class")
                        return RetryOutcome(retry_key=req.retry_key, **{k: e.data.get(k) for k in fields})  # type: ignore[arg-type]
                return RetryOutcome(retry_key=req.retry_key, status="unconfirmed")
            provider = provider_for(req.provider, self.settings, self.store)
            try:
                result = provider.retry_charge(req.subscription_id, req.invoice_id, idem)
            except Exception:
                self.store.release_claim(req.subscription_id, req.campaign_started_at, req.retry_key, token)
                raise
            outcome = RetryOutcome(
                retry_key=req.retry_key,
                status=result.status,
                decline_code=result.decline_code,
                decline_class=result.decline_class,
            )
            self.store.mark_step_sent(
                req.subscription_id,
                req.customer_id,
                req.campaign_started_at,
                req.retry_key,
                idem,
                req.at,
                ledger_type="dunning.retry_attempted",
                data={**outcome.model_dump(exclude={"retry_key"}), **late_by(req.at, req.scheduled_at)},
            )
            campaign_event("retry", req.subscription_id, req.campaign_started_at, step=req.retry_key,
                           result=outcome.status, decline_class=outcome.decline_class)  # fmt: skip
            return outcome

        return await self._run(run, req.subscription_id, req.customer_id, req.campaign_started_at, req.retry_key, token)

    @activity.defn(name="terminal_action")
    async def terminal_action(self, req: TerminalRequest) -> EffectOutcome:
        """Cancel (or mark unpaid) through the provider, once, and only while the
        subscription is still past_due with this anchor. Failures retry and show in the
        UI; a permanent failure (e.g. the provider answers 401) is recorded and the
        campaign ends without it. An attempt that finds another's unconfirmed claim calls
        again with the same idempotency key (the provider dedupes)."""
        if req.action == "none":
            return EffectOutcome(status="none", detail="none")
        idem = idempotency_key(req.subscription_id, req.campaign_started_at, "terminal")
        token = attempt_token()

        def run() -> EffectOutcome:
            claim = self._claim(req.subscription_id, req.campaign_started_at, "terminal", idem, token)
            if claim.stale is not None:
                return EffectOutcome(status="superseded", superseded=claim.stale)
            if claim.state == "sent":
                return EffectOutcome(status="done", detail=f"{req.action}: done before")
            provider = provider_for(req.provider, self.settings, self.store)
            if req.action == "cancel":
                status = provider.cancel_subscription(req.subscription_id, idem)
            else:
                status = provider.mark_unpaid(req.subscription_id, req.invoice_id, idem)
            self.store.mark_step_sent(
                req.subscription_id, req.customer_id, req.campaign_started_at, "terminal", idem,
                datetime.now(UTC), ledger_type=None,
            )  # fmt: skip
            campaign_event("terminal", req.subscription_id, req.campaign_started_at, action=req.action, result=status)
            return EffectOutcome(status="done", detail=f"{req.action}: {status}")

        return await self._run(run, req.subscription_id, req.customer_id, req.campaign_started_at, "terminal", token)

    async def _run(self, run: Callable[[], T], sub: str, customer: str, started: datetime, key: str, token: str) -> T:
        """Run the provider call (heartbeating). A transient error retries with backoff; a
        permanent one (bad credentials, unknown object, missing configuration) is a state:
        `dunning.action_failed` in the ledger, the claim dropped (the provider refused, so
        nothing happened), and a non-retryable failure the campaign records and goes on."""
        try:
            async with heartbeating():
                return await asyncio.to_thread(run)
        except (ProviderError, ConfigError) as err:
            message = scrub(str(err))
            kind = type(err).__name__
            if isinstance(err, ProviderError) and err.retryable:
                raise ApplicationError(message, type=kind) from None
            await asyncio.to_thread(
                campaign_writes.fail_effect, self.store, sub, customer, started, key, token, kind, message,
                datetime.now(UTC),
            )  # fmt: skip
            raise ApplicationError(message, type=kind, non_retryable=True) from None
