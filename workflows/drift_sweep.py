"""DriftSweep: recompute every subscription worth a look, so drift between the provider,
the projection and the campaigns is fixed even when nobody asks (issue 9's sweep).

A Schedule (starter.schedules, overlap SKIP) starts one run every
`sweep_interval_seconds`. A run pages through the candidates in subscription-id order
(`sweep_candidates(after_id, page_size)`, a keyset cursor: a subscription added mid-sweep
is seen now or next time, never twice) and reconciles each page in batches of `batch`
(`sweep_reconcile(ids, sweep_key)`). The sweep key is the workflow id and run id: a
retried batch answers what it did before, and a later run's fix is a new ledger row.

The summary counts what was checked, drifted (some field disagreed), applied, deferred
(a payment in flight, the provider unreadable, outside the rollout slice ...) and errors,
and how often each drift field was seen. After `max_pages` pages (or when Temporal
suggests it) the run continues as new with the cursor and the counts so far.

No I/O and no clock here: everything outside is an activity. A run that cannot reach the
database for its retries fails; the next scheduled run starts over.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, Field

    from activities.sweep import SweepActivities, SweepItem
    from dunning.recompute_settings import RecomputeSettings

WORKFLOW_NAME = "DriftSweep"
SCHEDULE_ID = "dunning-drift-sweep"
_DEFAULTS = RecomputeSettings()
# Bounded: a sweep that cannot reach the database gives up; the Schedule's next run retries.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                    maximum_interval=timedelta(minutes=1), maximum_attempts=10)  # fmt: skip
CANDIDATES_TIMEOUT = timedelta(seconds=60)
BATCH_TIMEOUT = timedelta(hours=1)  # a slow provider at a low rate limit; a dead worker is the heartbeat's
HEARTBEAT = timedelta(seconds=20)
MAX_PAGES = 50


class SweepSummary(BaseModel):
    checked: int = 0
    drifted: int = 0
    applied: int = 0
    deferred: int = 0
    errors: int = 0
    fields: dict[str, int] = {}  # drift field ("store.field") -> subscriptions it disagreed on

    def add(self, items: list[SweepItem]) -> SweepSummary:
        fields = dict(self.fields)
        for item in items:
            for name in item.drift:
                fields[name] = fields.get(name, 0) + 1
        return SweepSummary(
            checked=self.checked + len(items),
            drifted=self.drifted + sum(1 for i in items if i.drift),
            applied=self.applied + sum(1 for i in items if i.status == "applied"),
            deferred=self.deferred + sum(1 for i in items if i.status == "deferred"),
            errors=self.errors + sum(1 for i in items if i.status == "error"),
            fields=dict(sorted(fields.items())),
        )


class SweepInput(BaseModel):
    page_size: int = Field(default=_DEFAULTS.sweep_page, ge=1, le=1000)
    batch: int = Field(default=_DEFAULTS.sweep_batch, ge=1, le=100)
    max_pages: int = Field(default=MAX_PAGES, ge=1)  # pages per run before continue-as-new
    after_id: str | None = None  # continued: the cursor
    so_far: SweepSummary | None = None  # continued: the counts of the earlier runs


@workflow.defn(name=WORKFLOW_NAME)
class DriftSweep:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepSummary:
        info = workflow.info()
        sweep_key = f"{info.workflow_id}:{info.run_id}"
        summary = inp.so_far or SweepSummary()
        cursor, pages = inp.after_id, 0
        while True:
            ids = await workflow.execute_activity_method(
                SweepActivities.sweep_candidates, args=[cursor, inp.page_size],
                start_to_close_timeout=CANDIDATES_TIMEOUT, retry_policy=RETRY,
            )  # fmt: skip
            for start in range(0, len(ids), inp.batch):
                items = await workflow.execute_activity_method(
                    SweepActivities.sweep_reconcile, args=[ids[start : start + inp.batch], sweep_key],
                    start_to_close_timeout=BATCH_TIMEOUT, heartbeat_timeout=HEARTBEAT, retry_policy=RETRY,
                )  # fmt: skip
                summary = summary.add(items)
            pages += 1
            if len(ids) < inp.page_size:
                workflow.logger.info("drift sweep done: %s", summary.model_dump_json())
                return summary
            cursor = ids[-1]
            if pages >= inp.max_pages or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(inp.model_copy(update={"after_id": cursor, "so_far": summary}))
