"""Python entry point for the host app and the payment service.

    client = await DunningClient.connect(settings)
    await client.start_campaign("sub_1", "cus_1", "ada@example.com", failed_at)
    answer = await client.payment_recovered("sub_1", "card_updated")   # what really happened
    state = await client.status("sub_1")

Starting and recovering go through the one receive path (starter.dispatch.receive_event):
an inbox row, the projection decision, then Temporal. Never a bare signal. A recovery's
`reason` is a code from dunning.reasons (ValueError otherwise), never free text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dunning import reasons, text
from dunning.config import Settings
from dunning.contracts import (
    CURRENT_SHAPE,
    AttachRequest,
    AttachResult,
    BillingEvent,
    CampaignInput,
    CampaignState,
    EventKind,
    RecoverRequest,
    RecoverResult,
    Resolution,
)
from dunning.store.entitlements import Attention, requires_attention
from dunning.store.store import Store
from starter.dispatch import Received, receive_event
from worker import search_attributes as sa
from worker.app import connect
from workflows.campaign import WORKFLOW_NAME, DunningCampaign, workflow_id

SERVICE_PREFIX = "payment_service:"


class UnknownSubscription(LookupError):
    """The subscription is not known to the engine (or never had a campaign)."""


class EventParked(RuntimeError):
    """The event was received before and its dispatch kept failing: it is parked (see
    `dunning inbox parked`); nothing was done now."""


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1e6)


class DunningClient:
    def __init__(
        self,
        client: Client,
        store: Store,
        settings: Settings,
        clock: Callable[[], Awaitable[datetime]] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self._clock = clock  # tests: the time-skipping server's clock

    @classmethod
    async def connect(cls, settings: Settings, store: Store | None = None) -> DunningClient:
        return cls(await connect(settings), store or Store.open(settings.db_url), settings)

    async def now(self) -> datetime:
        return await self._clock() if self._clock else datetime.now(UTC)

    async def _self(self) -> DunningClient:
        return self

    def _handle(self, subscription_id: str) -> WorkflowHandle:
        return self.client.get_workflow_handle_for(DunningCampaign.run, workflow_id(subscription_id))

    # --- the one path in --------------------------------------------------------------
    async def receive(self, event: BillingEvent) -> Received:
        return await receive_event(self.store, self._self, event, park_after=self.settings.inbox_park_after)

    async def start_campaign(
        self, subscription_id: str, customer_id: str, email: str | None, failed_at: datetime | None = None, **details: Any
    ) -> WorkflowHandle:
        """A payment failed: the failure goes through the receive path (inbox, projection,
        update-with-start). A running campaign is reached, never duplicated. The email
        goes to the store only. `details`: as `fail_payment`."""
        await self.fail_payment(subscription_id, customer_id, email, failed_at, **details)
        return self._handle(subscription_id)

    async def fail_payment(
        self,
        subscription_id: str,
        customer_id: str,
        email: str | None,
        failed_at: datetime | None = None,
        *,
        provider: str = "fake",
        name: str | None = None,
        decline_class: str | None = None,
        invoice_id: str | None = None,
        amount_due: int | None = None,
        currency: str | None = None,
        plan_id: str | None = None,
    ) -> Received:
        failed_at = failed_at or await self.now()
        if failed_at.tzinfo is None:
            raise ValueError("failed_at must be timezone-aware")
        event = BillingEvent(
            provider=provider,  # type: ignore[arg-type]
            event_id=f"manual:{subscription_id}:{_us(failed_at)}",
            event_type="manual.payment_failed",
            kind=EventKind.payment_failed,
            occurred_at=failed_at,
            subscription_id=subscription_id,
            customer_id=customer_id,
            customer_email=email,
            customer_name=name,
            decline_class=decline_class,  # type: ignore[arg-type]
            invoice_id=invoice_id,
            amount_due=amount_due,
            currency=currency,
            plan_id=plan_id,
        )
        return await self.receive(event)

    async def payment_recovered(
        self, subscription_id: str, reason: str = reasons.DEFAULT, idempotency_key: str | None = None
    ) -> RecoverResult:
        """The payment service: the payment came in. Answers what the campaign really did.
        With the same `idempotency_key`, a repeat is a no-op that returns the first answer.
        `reason`: a code from `dunning.reasons.REASONS`; anything else is a ValueError
        (before anything is read or written)."""
        reason = reasons.check(reason)
        bad = text.first_problem([("subscription_id", subscription_id, text.MAX_ID),
                                  ("idempotency_key", idempotency_key, text.MAX_ID - len(SERVICE_PREFIX))])  # fmt: skip
        if bad:
            raise ValueError(bad)
        sub = await asyncio.to_thread(self.store.get_subscription, subscription_id)
        if sub is None:
            raise UnknownSubscription(f"subscription {subscription_id!r} is not known to the engine")
        event_id = SERVICE_PREFIX + (idempotency_key or uuid.uuid4().hex)
        event = BillingEvent(
            provider=sub.provider,  # type: ignore[arg-type]
            event_id=event_id,
            event_type="payment_service.payment_recovered",
            kind=EventKind.payment_recovered,
            occurred_at=await self.now(),
            subscription_id=subscription_id,
            customer_id=sub.customer_id,
            note=reason,
        )
        received = await self.receive(event)
        if received.status == "parked":
            raise EventParked(f"event {event_id!r} is parked ({received.result}); see `dunning inbox parked`")
        return await self._recovery(subscription_id, event_id, received)

    async def _recovery(self, subscription_id: str, event_id: str, received: Received) -> RecoverResult:
        """The answer from what dispatch recorded on the inbox row (so a repeat answers the same)."""
        result = received.result
        sub = await asyncio.to_thread(self.store.get_subscription, subscription_id)
        last = sub.last_outcome if sub else None

        def answer(status: str, outcome: str | None = None) -> RecoverResult:
            return RecoverResult.model_validate(
                {"status": status, "outcome": outcome, "subscription_id": subscription_id, "event_id": event_id,
                 "duplicate": received.status == "duplicate",
                 "campaign_started_at": sub.last_campaign_started_at if sub and outcome else None}  # fmt: skip
            )

        if result.startswith("already_ended:"):
            return answer("already_ended", result.split(":", 1)[1])
        if result in ("recovered", "recovered_after_cancel"):
            return answer(result, result)
        if result == "no_campaign":
            return answer(result)
        # not past_due when it arrived (nothing to end): say how the last campaign ended
        return answer("already_ended" if last else "no_campaign", last)

    # --- what dispatch sends ------------------------------------------------------------
    def _start_op(self, inp: CampaignInput) -> WithStartWorkflowOperation:
        return WithStartWorkflowOperation(
            DunningCampaign.run, inp, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, **self._start_options(inp)
        )

    def _start_options(self, inp: CampaignInput) -> dict[str, Any]:
        return dict(
            id=workflow_id(inp.subscription_id),
            task_queue=self.settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(sa.SUBSCRIPTION_ID, inp.subscription_id),
                    SearchAttributePair(sa.CUSTOMER_ID, inp.customer_id),
                    SearchAttributePair(sa.PROVIDER, inp.provider),
                    SearchAttributePair(sa.STAGE, "starting"),
                    SearchAttributePair(sa.CAMPAIGN_STARTED_AT, inp.failed_at),
                ]
            ),
            static_summary=f"Dunning campaign for subscription {inp.subscription_id}",
        )

    async def attach(self, event: BillingEvent, anchor: datetime) -> AttachResult:
        """Start the campaign anchored at `anchor` with the event in its input: one start
        call, answered once the server has stored it (no worker round trip). When a
        campaign is already running, update-with-start `attach` reaches it and answers which
        anchor is running (or starts this one if that campaign ended in between)."""
        assert event.subscription_id is not None
        inp = CampaignInput(
            shape=CURRENT_SHAPE,
            subscription_id=event.subscription_id,
            customer_id=event.customer_id or event.subscription_id,
            failed_at=anchor,
            provider=event.provider,
            decline_class=event.decline_class,
            invoice_id=event.invoice_id,
            amount_due=event.amount_due,
            currency=event.currency,
            plan_id=event.plan_id,
        )
        try:
            await self.client.start_workflow(
                DunningCampaign.run,
                inp.model_copy(update={"event": event.for_workflow()}),
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                **self._start_options(inp),
            )
            return AttachResult(campaign_started_at=anchor, applied=True)
        except WorkflowAlreadyStartedError:
            pass  # a campaign is running: the Update learns which one, and applies the event if it is this one
        return await self.client.execute_update_with_start_workflow(
            DunningCampaign.attach,
            AttachRequest(event=event.for_workflow(), anchor=anchor),
            start_workflow_operation=self._start_op(inp),
            id=f"attach-{event.event_id}"[:255],
        )

    async def signal_event(self, event: BillingEvent) -> bool:
        """A later failure or payment-method update for the running campaign."""
        return await self._signal(event.subscription_id or "", DunningCampaign.billing_event, event.for_workflow())

    async def resolve(self, subscription_id: str, reason: str, kind: str = "") -> bool:
        """End a running campaign without payment (voided, uncollectible, cancelled)."""
        return await self._signal(subscription_id, DunningCampaign.resolve, Resolution(kind=kind, reason=reason))

    async def _signal(self, subscription_id: str, signal, arg) -> bool:
        try:
            await self._handle(subscription_id).signal(signal, arg)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # none ever, or it has ended
                return False
            raise
        return True

    async def recover(self, subscription_id: str, event_id: str, reason: str) -> str:
        """The `recover` Update: the campaign's own answer."""
        req = RecoverRequest(event_id=event_id[:255], reason=reason[:200])
        try:
            result = await self._handle(subscription_id).execute_update(
                DunningCampaign.recover, req, id=f"recover-{event_id}"[:255]
            )
        except WorkflowUpdateFailedError:  # the validator: it had already ended
            return await self._ended(subscription_id)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            return await self._ended(subscription_id)
        return f"already_ended:{result.outcome}" if result.status == "already_ended" else result.status

    async def recover_after_cancel(
        self, subscription_id: str, customer_id: str, provider: str, anchor: datetime, event_id: str, reason: str
    ) -> str:
        """A payment after the exhausted campaign's terminal action: a short run records
        `recovered_after_cancel` for that campaign's identity and answers."""
        inp = CampaignInput(
            shape=CURRENT_SHAPE,
            subscription_id=subscription_id, customer_id=customer_id, failed_at=anchor, provider=provider,
            after_cancel=True,
        )  # fmt: skip
        result = await self.client.execute_update_with_start_workflow(
            DunningCampaign.recover,
            RecoverRequest(event_id=event_id[:255], reason=reason[:200]),
            start_workflow_operation=self._start_op(inp),
            id=f"recover-{event_id}"[:255],
        )
        return f"already_ended:{result.outcome}" if result.status == "already_ended" else result.status

    async def _ended(self, subscription_id: str) -> str:
        try:
            state = await self.status(subscription_id)
        except UnknownSubscription:
            return "no_campaign"
        return f"already_ended:{state.outcome}"

    # --- reads ------------------------------------------------------------------------
    def requires_attention(self, customer_id: str) -> Attention | None:
        """Does the customer need attention, and what are they entitled to? Reads the
        store only: no Temporal call, no side effect. None: unknown customer."""
        return requires_attention(self.store, customer_id, self.settings.attention_message)

    async def _describe(self, subscription_id: str):
        handle = self._handle(subscription_id)
        try:
            return handle, await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise UnknownSubscription(f"subscription {subscription_id!r} has no dunning campaign") from None
            raise

    async def status(self, subscription_id: str) -> CampaignState:
        """The latest campaign's state, running or finished."""
        handle, desc = await self._describe(subscription_id)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            return await handle.query(DunningCampaign.state)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            return await handle.result()
        raise RuntimeError(f"campaign {handle.id} ended {desc.status.name.lower()} (see the Temporal UI)")


__all__ = ["DunningClient", "EventParked", "UnknownSubscription", "WORKFLOW_NAME"]
