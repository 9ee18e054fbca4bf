"""The one receive path every billing event takes, and the dispatch of its decision.

    receive_event: inbox row (provider, event_id) once -> projection decision (one
                   transaction, stored on the inbox row) -> dispatch -> row dispatched
                   with what happened (a repeat answers that, and changes nothing)

Webhooks, the payment service (HTTP, CLI, Python), `dunning campaign start` and
`dunning simulate` all come through here. The decision is stored before anything is sent
to Temporal, so a dispatch can run again: after a 503, on a provider redelivery, or from
the sweep. Every step is safe to repeat.

    start         update-with-start `attach` (USE_EXISTING): one call starts the campaign
                  or reaches the running one and learns its anchor; only while the
                  projection still holds this anchor (else 'superseded')
    update        signal `billing_event` to the running campaign
    recover       Update `recover`: the campaign's real answer ('recovered',
                  'recovered_after_cancel', 'already_ended:<outcome>', 'no_campaign')
    resolve       signal `resolve` with what resolved it
    late_payment  update-with-start of a run that records `recovered_after_cancel` for the
                  exhausted campaign's identity
    none / stale  nothing to send
    recompute     a `recompute_requested` or `drift_detected` event: starter.recompute
                  reads every store and applies the minimal diff (its report is the result)
    bad debt      a `bad_debt_paid` event for a subscription in bad debt leaves it through
                  starter.bad_debt.paid_event (bad_debt.exited, no charge); otherwise it
                  is a payment like any other

A dispatch that fails for a reason waiting will not fix (not Temporal or the database
unreachable, not a busy campaign) is counted on the inbox row; at `inbox_park_after`
failures the row is parked with the reason (dunning.store.inbox_parking) and the sweep
leaves it alone. The sweep takes rows that never failed first, so failing rows never
starve the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from dunning import rollout
from dunning.contracts import BillingEvent, EventKind
from dunning.projection import PAST_DUE, Decision, decide
from dunning.scrub import scrub
from dunning.store import availability, inbox_parking
from dunning.store.store import InboxRow, Store
from starter.inbox_marks import mark_dispatched
from starter.temporal_gate import is_unavailable

if TYPE_CHECKING:
    from starter.client import DunningClient

log = logging.getLogger("dunning.dispatch")

DEFAULT_TIMEOUT = 10.0
# Temporal answers that mean "not now" rather than "never" (besides temporal_gate's unavailable)
_RPC_WAITS = frozenset({RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.ABORTED, RPCStatusCode.CANCELLED})
RECOMPUTE_KINDS = frozenset({EventKind.recompute_requested, EventKind.drift_detected})


class CampaignBusy(Exception):
    """An earlier campaign of this subscription (another anchor) is still running, so a
    start would only reach it. The row stays pending; a later dispatch starts the new one."""


@dataclass(frozen=True)
class Received:
    """What the receive path did with one event."""

    status: str  # processed | duplicate | parked
    action: str  # the projection's action ('' for a duplicate or a parked row)
    result: str  # what dispatch did (duplicate: what it did the first time; parked: why it is)
    detail: Any = None  # a recompute event's full report (starter.recompute.Report)


def is_transient(err: BaseException) -> bool:
    """A failure that waiting fixes: never counted towards parking."""
    if isinstance(err, CampaignBusy | TimeoutError | WorkflowUpdateRPCTimeoutOrCancelledError):
        return True  # busy, or Temporal did not answer in time: not the event's fault
    if is_unavailable(err) or availability.is_unavailable(err):
        return True
    return isinstance(err, RPCError) and err.status in _RPC_WAITS


def failure_reason(err: BaseException) -> str:
    """The exception type and its message, with no email address in it, bounded."""
    return scrub(f"{type(err).__name__}: {err}", inbox_parking.REASON_MAX)


async def count_failure(store: Store, provider: str, event_id: str, err: BaseException, park_after: int) -> None:
    """One failed dispatch of a row (a transient one is not counted); parks it at `park_after`."""
    if is_transient(err):
        return
    reason = failure_reason(err)
    try:
        failed = await asyncio.to_thread(inbox_parking.dispatch_failed, store, provider, event_id, reason, park_after)
    except Exception as count_err:  # the original error is what the caller reports
        log.warning("inbox row %s/%s: failure not counted (%s)", provider, event_id, type(count_err).__name__)
        return
    if failed.status == "parked":
        log.error("inbox row %s/%s parked after %d failed dispatches: %s", provider, event_id, failed.attempts, reason)
    else:
        log.warning("inbox row %s/%s: dispatch %d failed: %s", provider, event_id, failed.attempts, reason)


async def receive_event(
    store: Store,
    get_client: Callable[[], Awaitable[DunningClient]],
    event: BillingEvent,
    *,
    park_after: int,
    timeout: float = DEFAULT_TIMEOUT,
) -> Received:
    """Inbox, projection, dispatch. Raises CampaignBusy or the Temporal error; the row then
    stays 'received' for a redelivery or the sweep. Any other failure is counted on the
    row (parked at `park_after`) and raised. A parked row answers 'parked', doing nothing."""
    if event.subscription_id and event.kind not in RECOMPUTE_KINDS and event.kind is not EventKind.bad_debt_paid:
        fresh = await _receive_new(store, event)
        if fresh is not None:  # a new event: inbox row, decision and projection in one transaction
            if fresh.action in ("none", "stale"):
                return Received("processed", fresh.action, "nothing")
            try:
                result = await dispatch(store, await get_client(), event, fresh, timeout=timeout, fresh=True)
            except Exception as err:
                await count_failure(store, event.provider, event.event_id, err, park_after)
                raise
            return Received("processed", fresh.action, result)
    state = await asyncio.to_thread(
        store.inbox_receive,
        event.provider,
        event.event_id,
        event.event_type,
        event.subscription_id,
        event.occurred_at,
        {"event": event.for_workflow().model_dump(mode="json")},
        customer_email=event.customer_email,
        customer_name=event.customer_name,
    )
    if state in ("dispatched", "ignored", "parked"):
        row = await asyncio.to_thread(store.inbox_get, event.provider, event.event_id)
        return Received("parked" if state == "parked" else "duplicate", "", (row.reason if row else None) or state)
    # 'new', or 'received' (a redelivery, or a concurrent delivery of the same event): the
    # projection is decided once; a repeat gets the stored decision and dispatches it again.
    try:
        if event.kind in RECOMPUTE_KINDS:  # recompute decides from every store, not the projection alone
            report = await _recompute(store, await get_client(), event)
            return Received("processed", event.kind.value if event.kind else "", report.summary, report)
        if event.kind is EventKind.bad_debt_paid:  # bad debt leaves by its own path, not collection's
            exited = await _bad_debt_paid(store, await get_client(), event)
            if exited is not None:
                return Received("processed", "bad_debt_paid", exited)
        decision = await asyncio.to_thread(store.apply_projection, event, decide)
        if decision.action in ("none", "stale"):
            await asyncio.to_thread(store.inbox_mark_dispatched, event.provider, event.event_id, "nothing")
            return Received("processed", decision.action, "nothing")
        result = await dispatch(store, await get_client(), event, decision, timeout=timeout)
    except Exception as err:
        await count_failure(store, event.provider, event.event_id, err, park_after)
        raise
    return Received("processed", decision.action, result)


async def _receive_new(store: Store, event: BillingEvent) -> Decision | None:
    """`Store.receive_and_decide`, or None (nothing written) when the event was seen before
    or deciding failed: the step-by-step path then records the row and counts the failure."""
    payload = {"event": event.for_workflow().model_dump(mode="json")}
    try:
        return await asyncio.to_thread(store.receive_and_decide, event, payload, decide)
    except Exception as err:
        if availability.is_unavailable(err):
            raise
        log.warning("event %s/%s: deciding failed (%s); recorded step by step", event.provider, event.event_id,
                    type(err).__name__)  # fmt: skip
        return None


async def _bad_debt_paid(store: Store, client: DunningClient, event: BillingEvent) -> str | None:
    from starter.bad_debt import paid_event

    exited = await asyncio.to_thread(paid_event, client.settings, store, event)
    if exited is not None:
        await asyncio.to_thread(store.inbox_mark_dispatched, event.provider, event.event_id, exited)
    return exited


async def _recompute(store: Store, client: DunningClient, event: BillingEvent) -> Any:
    from starter import recompute

    report = await recompute.handle(store, client, event)
    await asyncio.to_thread(store.inbox_mark_dispatched, event.provider, event.event_id, report.summary)
    return report


async def dispatch(
    store: Store,
    client: DunningClient,
    event: BillingEvent,
    decision: Decision,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    fresh: bool = False,
) -> str:
    """Send the decided action to Temporal, then mark the inbox row dispatched with what
    happened (a group commit with other dispatches: starter.inbox_marks). Raises
    CampaignBusy, or the Temporal error (see `starter.temporal_gate.is_unavailable`); the
    row then stays undispatched. `fresh`: decided just now, in this call's transaction."""
    result = await asyncio.wait_for(send_decision(store, client, event, decision, fresh=fresh), timeout)
    await mark_dispatched(store, event.provider, event.event_id, result)
    return result


async def send_decision(
    store: Store, client: DunningClient, event: BillingEvent, decision: Decision, *, fresh: bool = False
) -> str:
    sub_id = decision.subscription_id
    action = decision.action
    if action in ("none", "stale"):
        return "nothing"
    if action in ("start", "update") and not client.settings.campaign.enabled:
        return "campaign_disabled"
    if action == "start" and rollout.mode_for(client.settings.rollout, sub_id, decision.customer_id) == "off":
        return "rollout_off"  # outside the rollout's slice: the engine starts no campaign
    if action == "start":
        # a stored decision (a redelivery, the sweep) is checked against the projection now;
        # a fresh one was decided from it a moment ago (and every effect re-checks anyway)
        current = None if fresh else await asyncio.to_thread(store.get_subscription, sub_id)
        if not fresh and (
            current is None or current.status != PAST_DUE or current.dunning_campaign_started_at != decision.anchor
        ):
            return "superseded"  # paid, resolved or re-anchored since: starting now would be wrong
        assert decision.anchor is not None
        attached = await client.attach(event.model_copy(update={"customer_id": decision.customer_id}), decision.anchor)
        if not attached.applied:
            raise CampaignBusy(
                f"subscription {sub_id!r}: the campaign begun {attached.campaign_started_at.isoformat()} is still "
                f"running; the one for {decision.anchor.isoformat()} starts when it has ended"
            )
        return "started"
    if action == "update":
        return "updated" if await client.signal_event(event) else "not_running"
    if action == "recover":
        return await client.recover(sub_id, event.event_id, decision.reason)
    if action == "resolve":
        return "signalled" if await client.resolve(sub_id, decision.reason, decision.kind) else "not_running"
    if action == "late_payment":
        if decision.anchor_before is None:
            return "nothing"
        return await client.recover_after_cancel(
            sub_id, decision.customer_id, decision.provider, decision.anchor_before, event.event_id, decision.reason
        )
    raise ValueError(f"unknown action {action!r}")  # pragma: no cover - Decision allows no other


def stored_event(row: InboxRow) -> BillingEvent | None:
    raw = row.payload.get("event") if isinstance(row.payload, dict) else None
    return BillingEvent.model_validate(raw) if raw else None


async def redispatch_pending(
    store: Store, client: DunningClient, *, min_age: float = 0.0, limit: int = 100, timeout: float = DEFAULT_TIMEOUT
) -> int:
    """Dispatch inbox rows still 'received' (received at least `min_age` seconds ago):
    rows that never failed first, then oldest event first. Returns how many were
    dispatched. Stops at the first sign that Temporal or the database is unreachable; a
    busy subscription's later rows wait for the next pass; a row that fails otherwise is
    counted and, at `settings.inbox_park_after` failures, parked."""
    park_after = client.settings.inbox_park_after
    older_than = datetime.now(UTC) - timedelta(seconds=min_age)
    rows = await asyncio.to_thread(store.inbox_undispatched, older_than, limit)
    done = 0
    blocked: set[str] = set()
    for row in rows:
        if row.subscription_id in blocked:
            continue
        try:
            event = stored_event(row)
            if event is None:
                raise ValueError("the inbox row has no stored event")
            if event.kind in RECOMPUTE_KINDS:
                await _recompute(store, client, event)
                done += 1
                continue
            decision = await asyncio.to_thread(store.apply_projection, event, decide)  # stored decision if any
            await dispatch(store, client, event, decision, timeout=timeout)
        except CampaignBusy as err:
            log.info("%s", err)
            blocked.add(row.subscription_id or "")
            continue
        except Exception as err:
            if is_unavailable(err) or availability.is_unavailable(err):
                what = "Temporal" if is_unavailable(err) else "the database"
                log.warning("re-dispatch paused, %s is unreachable (%s)", what, type(err).__name__)
                break
            await count_failure(store, row.provider, row.event_id, err, park_after)
            blocked.add(row.subscription_id or "")  # its later events wait: they are applied in order
            continue
        done += 1
    return done
