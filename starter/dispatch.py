"""Dispatch a decided billing event to its campaign, and re-dispatch what is pending.

The decision (dunning.projection) is stored in the event's inbox row before anything is
sent to Temporal, so a dispatch can run again: after a 503, on a provider redelivery, or
from the sweep. Every step is safe to repeat: signal-with-start uses USE_EXISTING, a
signal to a finished campaign is skipped, and the row is marked dispatched only after
Temporal accepted the call.

    start    client.on_failure(event, start=True)   only while the projection still holds
                                                    this anchor (else 'superseded')
    update   client.on_failure(event, start=False)
    recover  client.payment_recovered(sub, reason)  (no campaign ever: fine)
    resolve  client.resolve(sub, reason)
    none / stale                                    nothing to send
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from temporalio.exceptions import WorkflowAlreadyStartedError

from dunning.contracts import BillingEvent
from dunning.projection import PAST_DUE, Decision, decide
from dunning.store.store import InboxRow, Store
from starter.temporal_gate import is_unavailable
from worker import search_attributes as sa

if TYPE_CHECKING:
    from starter.client import DunningClient

log = logging.getLogger("dunning.dispatch")

DEFAULT_TIMEOUT = 10.0
_SAME_ANCHOR = timedelta(seconds=1)


class CampaignBusy(Exception):
    """An earlier campaign of this subscription (another anchor) is still running, so a
    start would only signal it. The row stays pending; a later dispatch starts the new one."""


async def dispatch(
    store: Store, client: DunningClient, event: BillingEvent, decision: Decision, *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Send the decided action to Temporal, then mark the inbox row dispatched.

    Returns what happened: 'started', 'updated', 'signalled', 'not_running',
    'superseded', 'campaign_disabled' or 'nothing'. Raises CampaignBusy, or the Temporal error (see
    `starter.temporal_gate.is_unavailable`); the row then stays undispatched."""
    result = await asyncio.wait_for(_send(store, client, event, decision), timeout)
    await asyncio.to_thread(store.inbox_mark_dispatched, event.provider, event.event_id, result)
    return result


async def _send(store: Store, client: DunningClient, event: BillingEvent, decision: Decision) -> str:
    from starter.client import UnknownSubscription

    sub_id = decision.subscription_id
    action = decision.action
    if action in ("none", "stale"):
        return "nothing"
    if action in ("start", "update") and not client.settings.campaign.enabled:
        return "campaign_disabled"
    if action == "start":
        current = await asyncio.to_thread(store.get_subscription, sub_id)
        if current is None or current.status != PAST_DUE or current.dunning_campaign_started_at != decision.anchor:
            return "superseded"  # paid, resolved or re-anchored since: starting now would be wrong
        started = event.model_copy(update={"customer_id": decision.customer_id})
        try:
            handle = await client.on_failure(started, start=True)
        except WorkflowAlreadyStartedError:
            # a concurrent start of the same id won the race; USE_EXISTING now finds it
            handle = await client.on_failure(started, start=True)
        assert handle is not None and decision.anchor is not None
        desc = await handle.describe()
        running_anchor = desc.typed_search_attributes.get(sa.CAMPAIGN_STARTED_AT)
        if running_anchor is not None and abs(running_anchor - decision.anchor) >= _SAME_ANCHOR:
            raise CampaignBusy(
                f"subscription {sub_id!r}: the campaign begun {running_anchor.isoformat()} is still running; "
                f"the one for {decision.anchor.isoformat()} starts when it has ended"
            )
        return "started"
    if action == "update":
        await client.on_failure(event, start=False)  # signals a running campaign, if any
        return "updated"
    if action == "recover":
        try:
            return "signalled" if await client.payment_recovered(sub_id, decision.reason) else "not_running"
        except UnknownSubscription:
            return "not_running"
    if action == "resolve":
        return "signalled" if await client.resolve(sub_id, decision.reason) else "not_running"
    raise ValueError(f"unknown action {action!r}")  # pragma: no cover - Decision allows no other


def stored_event(row: InboxRow) -> BillingEvent | None:
    raw = row.payload.get("event") if isinstance(row.payload, dict) else None
    return BillingEvent.model_validate(raw) if raw else None


async def redispatch_pending(
    store: Store, client: DunningClient, *, min_age: float = 0.0, limit: int = 100, timeout: float = DEFAULT_TIMEOUT
) -> int:
    """Dispatch every inbox row still 'received' (received at least `min_age` seconds
    ago), oldest event first. Returns how many were dispatched. Stops at the first sign
    that Temporal is unreachable; a busy subscription's later rows wait for the next pass."""
    older_than = datetime.now(UTC) - timedelta(seconds=min_age)
    rows = await asyncio.to_thread(store.inbox_undispatched, older_than, limit)
    done = 0
    blocked: set[str] = set()
    for row in rows:
        if row.subscription_id in blocked:
            continue
        event = stored_event(row)
        if event is None:
            log.error("inbox row %s/%s has no stored event; left pending", row.provider, row.event_id)
            continue
        try:
            decision = await asyncio.to_thread(store.apply_projection, event, decide)  # stored decision if any
            await dispatch(store, client, event, decision, timeout=timeout)
        except CampaignBusy as err:
            log.info("%s", err)
            blocked.add(row.subscription_id or "")
            continue
        except Exception as err:
            if is_unavailable(err):
                log.warning("re-dispatch paused, Temporal is unreachable: %s", err)
                break
            log.exception("re-dispatch of %s/%s failed; left pending", row.provider, row.event_id)
            blocked.add(row.subscription_id or "")
            continue
        done += 1
    return done
