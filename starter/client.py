"""Python entry point for the host app and the payment service.

    client = await DunningClient.connect(settings)
    await client.start_campaign("sub_1", "cus_1", "ada@example.com", failed_at)
    await client.payment_recovered("sub_1", "paid by card")
    state = await client.status("sub_1")
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from dunning.config import Settings
from dunning.contracts import BillingEvent, CampaignInput, CampaignState
from dunning.store.entitlements import Attention, requires_attention
from dunning.store.store import Store
from worker import search_attributes as sa
from worker.app import connect
from workflows.campaign import WORKFLOW_NAME, DunningCampaign, workflow_id


class UnknownSubscription(LookupError):
    """The subscription never had a campaign."""


class DunningClient:
    def __init__(self, client: Client, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings

    @classmethod
    async def connect(cls, settings: Settings, store: Store | None = None) -> DunningClient:
        return cls(await connect(settings), store or Store.open(settings.db_url), settings)

    async def start_campaign(
        self,
        subscription_id: str,
        customer_id: str,
        email: str | None,
        failed_at: datetime | None = None,
        *,
        provider: str = "fake",
        name: str | None = None,
        start_signal: str | None = None,
        start_signal_args: list | None = None,
        decline_class: str | None = None,
        invoice_id: str | None = None,
        amount_due: int | None = None,
        plan_id: str | None = None,
    ) -> WorkflowHandle:
        """Start (or return the running) campaign. The email goes to the store only."""
        failed_at = failed_at or datetime.now(UTC)
        if failed_at.tzinfo is None:
            raise ValueError("failed_at must be timezone-aware")
        if email is not None or name is not None:
            await asyncio.to_thread(self.store.upsert_customer, customer_id, email, name)
        inp = CampaignInput(
            subscription_id=subscription_id,
            customer_id=customer_id,
            failed_at=failed_at,
            provider=provider,
            decline_class=decline_class,
            invoice_id=invoice_id,
            amount_due=amount_due,
            plan_id=plan_id,
        )
        return await self.client.start_workflow(
            DunningCampaign.run,
            inp,
            id=workflow_id(subscription_id),
            task_queue=self.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.SUBSCRIPTION_ID, subscription_id),
                    SearchAttributePair(sa.CUSTOMER_ID, customer_id),
                    SearchAttributePair(sa.PROVIDER, provider),
                    SearchAttributePair(sa.STAGE, "starting"),
                    SearchAttributePair(sa.CAMPAIGN_STARTED_AT, failed_at),
                ]
            ),
            static_summary=f"Dunning campaign for subscription {subscription_id}",
            start_signal=start_signal,
            start_signal_args=start_signal_args or [],
        )

    async def on_failure(self, event: BillingEvent, *, start: bool) -> WorkflowHandle | bool:
        """A payment failed. `start`: the subscription just turned past_due, so
        signal-with-start a campaign anchored at the provider's failure time (USE_EXISTING:
        a running campaign is signalled, never duplicated). Otherwise only signal a
        running campaign with the new attempt/decline info."""
        if not start:
            return await self._signal_if_running(event.subscription_id, DunningCampaign.billing_event, event.for_workflow())
        return await self.start_campaign(
            event.subscription_id,
            event.customer_id or event.subscription_id,
            None,
            event.occurred_at,
            provider=event.provider,
            decline_class=event.decline_class,
            invoice_id=event.invoice_id,
            amount_due=event.amount_due,
            plan_id=event.plan_id,
            start_signal="billing_event",
            start_signal_args=[event.for_workflow()],
        )

    async def resolve(self, subscription_id: str, reason: str) -> bool:
        """End a running campaign without payment (voided, uncollectible, cancelled)."""
        return await self._signal_if_running(subscription_id, DunningCampaign.resolve, reason)

    async def _signal_if_running(self, subscription_id: str, signal, arg) -> bool:
        try:
            handle, desc = await self._describe(subscription_id)
        except UnknownSubscription:
            return False
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return False
        await handle.signal(signal, arg)
        return True

    def requires_attention(self, customer_id: str) -> Attention:
        """Does the customer need attention, and what are they entitled to? Reads the
        store only: no Temporal call, no side effect."""
        return requires_attention(self.store, customer_id, self.settings.attention_message)

    async def _describe(self, subscription_id: str):
        handle = self.client.get_workflow_handle_for(DunningCampaign.run, workflow_id(subscription_id))
        try:
            return handle, await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise UnknownSubscription(f"subscription {subscription_id!r} has no dunning campaign") from None
            raise

    async def payment_recovered(self, subscription_id: str, reason: str = "payment recovered") -> bool:
        """Signal recovery. Idempotent: False when no campaign is running (nothing to do)."""
        await self._describe(subscription_id)  # UnknownSubscription when it never had one
        return await self._signal_if_running(subscription_id, DunningCampaign.payment_recovered, reason)

    async def status(self, subscription_id: str) -> CampaignState:
        """The latest campaign's state, running or finished."""
        handle, desc = await self._describe(subscription_id)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            return await handle.query(DunningCampaign.state)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result()
        raise RuntimeError(f"campaign {handle.id} ended {desc.status.name.lower()} (see the Temporal UI)")


__all__ = ["DunningClient", "UnknownSubscription", "WORKFLOW_NAME"]
