"""Payment effects through the provider: an engine-driven retry, and the terminal action
on exhaustion. Each is claimed before the provider is called, so a crash between the
call and its record never charges or cancels twice blindly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.attempt import attempt_token

from dunning.config import ConfigError, Settings
from dunning.contracts import RetryOutcome, RetryRequest, TerminalRequest
from dunning.providers.actions import ProviderError, provider_for
from dunning.store.store import Store


def idempotency_key(subscription_id: str, campaign_started_at: datetime, key: str) -> str:
    return f"dunning:{subscription_id}:{int(campaign_started_at.timestamp() * 1e6)}:{key}"


class PaymentActivities:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def _claim(self, sub: str, started: datetime, key: str, idem: str, token: str) -> bool:
        state, owner = self.store.claim_step(sub, started, key, idem, token, datetime.now(UTC))
        return state != "sent" and owner == token

    @activity.defn(name="retry_payment")
    async def retry_payment(self, req: RetryRequest) -> RetryOutcome:
        idem = idempotency_key(req.subscription_id, req.campaign_started_at, req.retry_key)
        token = attempt_token()

        def run() -> RetryOutcome:
            if not self._claim(req.subscription_id, req.campaign_started_at, req.retry_key, idem, token):
                # Done before (return its recorded result), or claimed by an attempt that
                # died mid-call: never charge again blindly.
                for e in self.store.events(req.subscription_id, req.campaign_started_at):
                    if e.type == "dunning.retry_attempted" and e.step_key == req.retry_key:
                        fields = ("status", "decline_code", "decline_class")
                        return RetryOutcome(retry_key=req.retry_key, **{k: e.data.get(k) for k in fields})
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
                data=outcome.model_dump(exclude={"retry_key"}),
            )
            return outcome

        try:
            return await asyncio.to_thread(run)
        except ProviderError as err:
            raise ApplicationError(str(err), type="ProviderError", non_retryable=not err.retryable) from err
        except ConfigError as err:  # e.g. DUNNING_BRAINTREE_MERCHANT_ID missing: a visible state
            raise ApplicationError(str(err), type="ConfigError", non_retryable=True) from err

    @activity.defn(name="terminal_action")
    async def terminal_action(self, req: TerminalRequest) -> str:
        """Cancel (or mark unpaid) through the provider, once. Failures retry and show
        in the UI; they never leave the campaign half-ended."""
        if req.action == "none":
            return "none"
        idem = idempotency_key(req.subscription_id, req.campaign_started_at, "terminal")

        def run() -> str:
            provider = provider_for(req.provider, self.settings, self.store)
            if req.action == "cancel":
                status = provider.cancel_subscription(req.subscription_id, idem)
            else:
                status = provider.mark_unpaid(req.subscription_id, req.invoice_id, idem)
            return f"{req.action}: {status}"

        try:
            return await asyncio.to_thread(run)
        except (ProviderError, ConfigError) as err:  # retried until it works: ops see the attempts in the UI
            raise ApplicationError(str(err), type=type(err).__name__) from err
