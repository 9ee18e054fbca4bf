"""Recompute one subscription: read every store, reconcile, apply the minimal diff.

    observe    the provider (through its API: dunning.providers.reads), the projection
               row, the running or last campaign (its `state` query or result), the
               ledger's bad-debt rows
    reconcile  dunning.reconcile (pure): the desired state and the actions, with reasons
    apply      the store's repairs and entitlement, checked against what was observed, in
               one transaction with the `dunning.drift_detected` ledger row
               (dunning.store.recompute_writes); then the campaign actions through the
               same calls the receive path makes: the `recover` Update, the `resolve`
               signal, update-with-start (rollout gate and the projection check included)

A plan is applied only through a `recompute_requested` (support) or `drift_detected`
(sweep) event on the receive path (starter.dispatch routes them here), so a repeated
request with the same key answers what the first did. A dry run observes and reconciles
and changes nothing. If the projection changed between the observation and the write,
recompute observes again (at most `ATTEMPTS` times).

The rollout gate: outside the slice (mode off) recompute starts no campaign; the plan's
start is withheld and `deferred` says so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from dunning import rollout
from dunning.config import ConfigError
from dunning.contracts import BillingEvent, EventKind
from dunning.projection import Decision
from dunning.providers.actions import ProviderError
from dunning.providers.reads import reader_for
from dunning.reconcile import (
    CampaignView,
    EndCampaign,
    LedgerEntry,
    Observed,
    Plan,
    ProjectionView,
    ReconcileConfig,
    StartCampaign,
    apply,
    reconcile,
)
from dunning.scrub import scrub
from dunning.store import stuck
from dunning.store.recompute_writes import Changed, write_plan
from dunning.store.store import Store, Subscription

if TYPE_CHECKING:
    from starter.client import DunningClient

log = logging.getLogger("dunning.recompute")
ATTEMPTS = 3
KINDS = frozenset({EventKind.recompute_requested, EventKind.drift_detected})
Source = Literal["support", "sweep"]


class UnknownSubscription(LookupError):
    """Neither the engine nor the caller names the subscription's provider."""


def _provider_name(subscription_id: str, row: Subscription | None, provider: str | None) -> str:
    """The engine's provider for a known subscription; the caller's for one it never saw."""
    name = (row.provider if row else None) or provider
    if name is None:
        raise UnknownSubscription(
            f"subscription {subscription_id!r} is unknown to the engine: name its provider (--provider)"
        )
    return name


class Applied(BaseModel):
    kind: str
    result: str


class Report(BaseModel):
    """What recompute saw, wants and did: the CLI and HTTP answer."""

    subscription_id: str
    provider: str
    observed: Observed
    provider_error: str | None = None
    campaign_error: str | None = None
    plan: Plan
    after: Observed  # what the stores say once the actions are applied
    dry_run: bool
    status: str  # dry_run | no_drift | deferred | applied | duplicate
    applied: list[Applied] = []

    @property
    def summary(self) -> str:
        done = ", ".join(f"{a.kind}={a.result}" for a in self.applied)
        return f"{self.status}{': ' + done if done else ''}"[:200]


class Observation(BaseModel):
    observed: Observed
    provider: str
    customer_id: str
    provider_error: str | None = None
    campaign_error: str | None = None


def config_of(client: DunningClient, provider: str) -> ReconcileConfig:
    return ReconcileConfig(in_flight_window=client.settings.recompute.in_flight_window,
                           on_exhaustion=client.settings.plan(provider).on_exhaustion)  # fmt: skip


async def observe(
    store: Store, client: DunningClient, subscription_id: str, provider: str | None = None
) -> Observation:
    from starter.client import UnknownSubscription as NoCampaign

    row = await asyncio.to_thread(store.get_subscription, subscription_id)
    name = _provider_name(subscription_id, row, provider)
    provider_view, provider_error = None, None
    try:
        reader = reader_for(name, client.settings, store)
        provider_view = await asyncio.to_thread(reader.read_subscription, subscription_id)
    except (ProviderError, ConfigError, ValueError) as err:
        provider_error = scrub(f"{type(err).__name__}: {err}", 300)
    campaign, campaign_error = None, None
    try:
        campaign = CampaignView.of(await client.status(subscription_id))
    except NoCampaign:
        pass
    except RuntimeError as err:  # terminated or failed: not running, no result to read
        campaign_error = scrub(str(err), 300)
    # an engine retry claimed and not yet answered is a payment in flight, as a processing one is
    charging = await asyncio.to_thread(stuck.retry_claimed_at, store, subscription_id)
    if charging is not None and campaign is not None:
        started = max(t for t in (campaign.payment_started_at, charging) if t is not None)
        campaign = campaign.model_copy(update={"payment_started_at": started})
    elif charging is not None and provider_view is not None:
        started = max(t for t in (provider_view.payment_started_at, charging) if t is not None)
        provider_view = provider_view.model_copy(update={"payment_started_at": started})
    events = await asyncio.to_thread(store.events, subscription_id)
    ledger = tuple(
        LedgerEntry(type=e.type, campaign_started_at=e.campaign_started_at, occurred_at=e.occurred_at)
        for e in events if e.type.startswith("bad_debt.")
    )  # fmt: skip
    observed = Observed(subscription_id=subscription_id, provider=provider_view,
                        projection=ProjectionView.of(row) if row else None, campaign=campaign, ledger=ledger)  # fmt: skip
    customer = row.customer_id if row else (events[-1].customer_id if events else subscription_id)
    return Observation(observed=observed, provider=name, customer_id=customer, provider_error=provider_error,
                       campaign_error=campaign_error)  # fmt: skip


def gate(client: DunningClient, seen: Observation, plan: Plan) -> Plan:
    """Withhold a start outside the rollout slice (the engine starts no campaign there)."""
    starts = [a for a in plan.actions if isinstance(a, StartCampaign)]
    if not starts or rollout.mode_for(client.settings.rollout, plan.subscription_id, seen.customer_id) != "off":
        return plan
    why = "outside the rollout slice: the engine starts no campaign for this subscription"
    kept = tuple(a for a in plan.actions if not isinstance(a, StartCampaign))
    deferred = "; ".join(w for w in (plan.deferred, why) if w)
    return plan.model_copy(update={"actions": kept, "withheld": (*plan.withheld, *starts), "deferred": deferred})


async def plan_for(
    store: Store, client: DunningClient, subscription_id: str, provider: str | None = None
) -> tuple[Observation, Plan]:
    seen = await observe(store, client, subscription_id, provider)
    plan = reconcile(seen.observed, config_of(client, seen.provider), await client.now())
    return seen, gate(client, seen, plan)


def report(seen: Observation, plan: Plan, *, dry_run: bool, status: str, applied: list[Applied]) -> Report:
    return Report(
        subscription_id=plan.subscription_id, provider=seen.provider, observed=seen.observed,
        provider_error=seen.provider_error, campaign_error=seen.campaign_error, plan=plan,
        after=apply(seen.observed, plan), dry_run=dry_run, status=status, applied=applied,
    )  # fmt: skip


async def dry_run(store: Store, client: DunningClient, subscription_id: str, provider: str | None = None) -> Report:
    seen, plan = await plan_for(store, client, subscription_id, provider)
    return report(seen, plan, dry_run=True, status="dry_run", applied=[])


async def handle(store: Store, client: DunningClient, event: BillingEvent) -> Report:
    """Apply a recompute event (called by the receive path). Raises what the stores or
    Temporal raise; the inbox row then stays undispatched for the next attempt."""
    assert event.subscription_id is not None and event.kind in KINDS
    source: Source = "sweep" if event.kind is EventKind.drift_detected else "support"
    for attempt in range(ATTEMPTS):
        seen, plan = await plan_for(store, client, event.subscription_id, event.provider)
        if not plan.actions:
            status = "deferred" if plan.deferred else "no_drift"
            return report(seen, plan, dry_run=False, status=status, applied=[])
        try:
            applied = await _apply(store, client, event, seen, plan, source)
        except Changed as err:
            log.info("%s (attempt %d of %d)", err, attempt + 1, ATTEMPTS)
            continue
        return report(seen, plan, dry_run=False, status="applied", applied=applied)
    raise Changed(f"subscription {event.subscription_id!r} kept changing while recompute ran; try again")


async def _apply(
    store: Store, client: DunningClient, event: BillingEvent, seen: Observation, plan: Plan, source: Source
) -> list[Applied]:
    o = seen.observed
    anchor = next((a.anchor for a in plan.actions if isinstance(a, (StartCampaign, EndCampaign))), None)
    anchor = anchor or (o.campaign.campaign_started_at if o.campaign else None) or (
        o.projection.dunning_campaign_started_at if o.projection else None)  # fmt: skip
    first = await asyncio.to_thread(
        write_plan, store, plan, o.projection, customer_id=seen.customer_id, provider=seen.provider,
        campaign_started_at=anchor, event_id=event.event_id, source=source, at=await client.now(),
        outbound=bool(client.settings.outbound_urls),
    )  # fmt: skip
    applied = [Applied(kind=a.kind, result="written" if first else "already_written")
               for a in plan.actions if a.kind in ("set_entitlement", "repair_projection")]  # fmt: skip
    for a in plan.actions:
        if isinstance(a, EndCampaign):
            applied.append(Applied(kind=a.kind, result=await _end(client, event, a)))
        elif isinstance(a, StartCampaign):
            applied.append(Applied(kind=a.kind, result=await _start(store, client, event, seen, a)))
    log.info("recompute %s subscription=%s drift=%s applied=%s", source, plan.subscription_id,
             ",".join(plan.drift), ",".join(f"{a.kind}:{a.result}" for a in applied))  # fmt: skip
    return applied


async def _end(client: DunningClient, event: BillingEvent, action: EndCampaign) -> str:
    sub = event.subscription_id or ""
    if action.outcome == "recovered":
        return await client.recover(sub, event.event_id, "invoice_paid")
    reason = f"recompute: {action.resolution or 'resolved'}"
    return "signalled" if await client.resolve(sub, reason, action.resolution) else "not_running"


async def _start(
    store: Store, client: DunningClient, event: BillingEvent, seen: Observation, action: StartCampaign
) -> str:
    from starter import dispatch

    sub = event.subscription_id or ""
    row = await asyncio.to_thread(store.get_subscription, sub)
    decision = Decision(
        action="start", subscription_id=sub, status=row.status if row else "past_due", anchor=action.anchor,
        last_event_at=row.last_event_at if row else None, decline_class=row.decline_class if row else None,
        customer_id=seen.customer_id, provider=seen.provider, reason="recompute", kind=event.kind or "",
    )  # fmt: skip
    p = seen.observed.provider
    start_event = event.model_copy(update={
        "customer_id": seen.customer_id, "invoice_id": p.invoice_id if p else None,
        "amount_due": p.amount_due if p else None,
    })  # fmt: skip
    try:
        return await dispatch.send_decision(store, client, start_event, decision)
    except dispatch.CampaignBusy:
        return "busy"


async def request(
    store: Store,
    client: DunningClient,
    subscription_id: str,
    key: str,
    *,
    source: Source = "support",
    provider: str | None = None,
) -> tuple[str, Report | None, str]:
    """A recompute through the receive path: ('processed', report, summary), or
    ('duplicate', None, the first request's summary) when this key was seen."""
    from starter.dispatch import receive_event

    row = await asyncio.to_thread(store.get_subscription, subscription_id)
    name = _provider_name(subscription_id, row, provider)
    kind = EventKind.drift_detected if source == "sweep" else EventKind.recompute_requested
    event = BillingEvent(
        provider=name, event_id=f"{kind.value}:{key}"[:255], event_type=kind.value, kind=kind,  # type: ignore[arg-type]
        occurred_at=await client.now(), subscription_id=subscription_id, customer_id=row.customer_id if row else None,
    )  # fmt: skip

    async def get_client() -> DunningClient:
        return client

    received = await receive_event(store, get_client, event, park_after=client.settings.inbox_park_after)
    return received.status, received.detail if isinstance(received.detail, Report) else None, received.result
