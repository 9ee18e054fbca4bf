"""The engine's Temporal Schedules: today one, `dunning-drift-sweep`, which starts the
DriftSweep workflow every `[recompute] sweep_interval_seconds`.

`apply_schedules` makes the Schedule what the settings say: it creates it, or, when it
exists, replaces its spec, action and policy (its pause state and history are kept), and
answers "created" or "updated". Running it again changes nothing else: it is what
`dunning dev` does at start and what `dunning schedules apply` does for a deployment.

Overlap SKIP: a sweep still running when the next one is due makes that one be skipped,
never run twice at once. `describe_schedules` is the data behind `dunning schedules show`:
the next run times and the recent runs with their status and summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)

from dunning.config import Settings
from workflows.drift_sweep import SCHEDULE_ID, DriftSweep, SweepInput, SweepSummary


def drift_sweep_schedule(settings: Settings) -> Schedule:
    r = settings.recompute
    action = ScheduleActionStartWorkflow(
        DriftSweep.run,
        SweepInput(page_size=r.sweep_page, batch=r.sweep_batch),
        id=SCHEDULE_ID,  # Temporal appends the scheduled time to each run's workflow id
        task_queue=settings.temporal_task_queue,
    )
    return Schedule(
        action=action,
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=r.sweep_interval_seconds))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def apply_schedules(client: Client, settings: Settings) -> str:
    """Create or update the drift-sweep Schedule: "created" or "updated"."""
    wanted = drift_sweep_schedule(settings)
    try:
        await client.create_schedule(SCHEDULE_ID, wanted)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state  # a pause by an operator stays
        return ScheduleUpdate(schedule=Schedule(action=wanted.action, spec=wanted.spec, policy=wanted.policy,
                                                state=state))  # fmt: skip

    await client.get_schedule_handle(SCHEDULE_ID).update(update)
    return "updated"


@dataclass(frozen=True)
class RecentRun:
    workflow_id: str
    started_at: datetime
    status: str  # running | completed | failed | ...
    summary: SweepSummary | None  # a completed run's result


@dataclass(frozen=True)
class ScheduleView:
    schedule_id: str
    every: list[timedelta]
    paused: bool
    note: str
    next_runs: list[datetime]
    recent: list[RecentRun]
    skipped_overlap: int


async def describe_schedules(client: Client, runs: int = 5) -> ScheduleView:
    """The drift-sweep Schedule, its next run times and its latest `runs` runs (newest last).
    Raises temporalio.service.RPCError (NOT_FOUND) when it was never applied."""
    desc = await client.get_schedule_handle(SCHEDULE_ID).describe()
    recent = []
    for result in list(desc.info.recent_actions)[-runs:]:
        run = getattr(result.action, "workflow_id", "")
        handle = client.get_workflow_handle(run, result_type=SweepSummary)
        status = (await handle.describe()).status
        summary = await handle.result() if status == WorkflowExecutionStatus.COMPLETED else None
        name = status.name.lower() if status is not None else "unknown"
        recent.append(RecentRun(workflow_id=run, started_at=result.started_at, status=name, summary=summary))
    return ScheduleView(
        schedule_id=desc.id,
        every=[i.every for i in desc.schedule.spec.intervals],
        paused=desc.schedule.state.paused,
        note=desc.schedule.state.note or "",
        next_runs=list(desc.info.next_action_times),
        recent=recent,
        skipped_overlap=desc.info.num_actions_skipped_overlap,
    )
