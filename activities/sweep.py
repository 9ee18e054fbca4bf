"""Activities of the drift sweep (workflows.drift_sweep): find the subscriptions worth a
look, and recompute them in small batches through the receive path.

    sweep_candidates(after_id, limit)   one SQL query per page, both databases: the
        engine's subscriptions in dunning (past_due / unpaid, a campaign anchor, a reduced
        entitlement) or changed within `sweep_recent_hours`, UNION the fake provider's
        accounts past_due / unpaid or changed recently (changes the engine may not have
        heard of); `id > after_id` ORDER BY id LIMIT: a stable keyset cursor.
    sweep_reconcile(ids, sweep_key)     per subscription: plan (starter.recompute.plan_for);
        actions -> recompute.request as a `drift_detected` event keyed
        `sweep_key:subscription`, so a retried activity answers the first result and the
        ledger gets one `dunning.drift_detected` row per fix. One subscription's failure is
        an `error` item (type and scrubbed message); the batch goes on. Temporal or the
        database unreachable is raised: Temporal retries the activity.

Provider reads are paced to `sweep_rate_per_second` per worker (one pacer shared by every
batch this worker runs; a drifted subscription costs two reads: the plan, then the receive
path's own observation). Progress is heartbeated after each subscription (and every second
while one takes long); a retried attempt resumes after the last finished subscription.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel
from temporalio import activity

from activities.heartbeat import heartbeating
from dunning.config import Settings
from dunning.reconcile import Plan
from dunning.scrub import scrub
from dunning.store import availability
from dunning.store.store import Store
from dunning.store.sweep_candidates import find_candidates
from starter import recompute, temporal_gate

if TYPE_CHECKING:
    from starter.client import DunningClient

log = logging.getLogger("dunning.sweep")
FALLBACK_PROVIDER = "fake"  # an id only the fake provider's accounts name (the engine has no row)
KEY_MAX = 200  # recompute's event id is "drift_detected:" + key, at most 255


class SweepItem(BaseModel):
    """What the sweep did for one subscription (ids and field names only)."""

    subscription_id: str
    status: Literal["no_drift", "applied", "deferred", "error"]
    drift: list[str] = []  # the fields that disagreed (withheld ones too, when deferred)
    error: str | None = None  # exception type and scrubbed message


def recompute_key(sweep_key: str, subscription_id: str) -> str:
    key = f"{sweep_key}:{subscription_id}"
    if len(key) <= KEY_MAX:
        return key
    return f"{sweep_key[:100]}:{hashlib.sha256(key.encode()).hexdigest()}"  # long ids: still one key each


def _unapplied(sub: str, plan: Plan) -> SweepItem:
    withheld = sorted({f for a in plan.withheld for f in a.drift})
    return SweepItem(subscription_id=sub, status="deferred" if plan.deferred else "no_drift", drift=withheld)


class SweepActivities:
    def __init__(self, settings: Settings, store: Store, client: DunningClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self._next_read = 0.0  # loop time of the next provider read this worker may make
        self._pace_lock = asyncio.Lock()

    @activity.defn(name="sweep_candidates")
    async def sweep_candidates(self, after_id: str | None, limit: int) -> list[str]:
        """The next page of subscription ids worth a look, after `after_id`, in id order."""
        since = datetime.now(UTC) - timedelta(hours=self.settings.recompute.sweep_recent_hours)
        return await asyncio.to_thread(find_candidates, self.store, after_id, limit, since)

    @activity.defn(name="sweep_reconcile")
    async def sweep_reconcile(self, ids: list[str], sweep_key: str) -> list[SweepItem]:
        """Recompute each subscription; an `applied` fix is recorded once per sweep key."""
        details = activity.info().heartbeat_details
        done = [SweepItem.model_validate(d) for d in (details[0] if details else [])]
        finished = {item.subscription_id for item in done}

        def progress() -> list[dict]:
            return [item.model_dump() for item in done]

        async with heartbeating(details=progress):  # also while one subscription takes long
            for sub in ids:
                if sub in finished:
                    continue
                await self._pace()
                done.append(await self._one(sub, sweep_key))
                activity.heartbeat(progress())
        return done

    async def _one(self, sub: str, sweep_key: str) -> SweepItem:
        try:
            _, plan = await recompute.plan_for(self.store, self.client, sub, FALLBACK_PROVIDER)
            if not plan.actions:
                return _unapplied(sub, plan)
            await self._pace()  # recompute observes the provider again, in the receive path
            status, report, first = await recompute.request(
                self.store, self.client, sub, recompute_key(sweep_key, sub), source="sweep", provider=FALLBACK_PROVIDER
            )
        except Exception as err:
            if temporal_gate.is_unavailable(err) or availability.is_unavailable(err):
                raise  # Temporal retries the activity; the finished ones are in the heartbeat
            activity.logger.warning("drift sweep: subscription %s failed: %s", sub, type(err).__name__)
            return SweepItem(subscription_id=sub, status="error", error=scrub(f"{type(err).__name__}: {err}", 300))
        if status == "parked":  # earlier attempts of this batch kept failing on it
            return SweepItem(subscription_id=sub, status="error", error=scrub(f"parked: {first}", 300))
        if report is None:  # this key was seen: an earlier attempt of this batch answered it
            if first.startswith("applied"):
                return SweepItem(subscription_id=sub, status="applied", drift=list(plan.drift))
            return SweepItem(subscription_id=sub, status="deferred" if first.startswith("deferred") else "no_drift")
        if report.status == "applied":
            log.info("drift sweep %s fixed subscription=%s drift=%s", sweep_key, sub, ",".join(report.plan.drift))
            return SweepItem(subscription_id=sub, status="applied", drift=list(report.plan.drift))
        return _unapplied(sub, report.plan)

    async def _pace(self) -> None:
        """At most `sweep_rate_per_second` provider reads per second on this worker."""
        interval = 1.0 / self.settings.recompute.sweep_rate_per_second
        async with self._pace_lock:
            loop = asyncio.get_running_loop()
            wait = self._next_read - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_read = max(self._next_read, loop.time()) + interval
