"""`dunning schedules apply` and `dunning schedules show`: the engine's Temporal Schedules
(starter.schedules; today the drift sweep) for a deployment without `dunning dev`.

    apply   create the drift-sweep Schedule, or update it to the settings; idempotent
    show    its interval, whether it is paused, the next run times, and the latest runs
            with their status and counts (checked, drifted, applied, deferred, errors)

Exit 0 on success, 1 when Temporal is unreachable or the Schedule was never applied
(`show`), 2 for a bad config.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from temporalio.client import Client

    from dunning.config import Settings

schedules_app = typer.Typer(help="The engine's Temporal Schedules (the drift sweep).", no_args_is_help=True)
CONNECT_TIMEOUT = 10.0


async def _temporal(settings: Settings) -> Client:
    from starter.cli import fail
    from worker.app import connect

    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except Exception as err:  # refused, timed out, TLS: whatever it is, Temporal is not usable
        fail(f"cannot reach Temporal at {settings.temporal_address}: {type(err).__name__}: {str(err)[:200]}")
        raise  # not reached: fail exits


def _unreachable(settings: Settings, err: BaseException) -> NoReturn:
    from starter.cli import fail
    from starter.temporal_gate import describe_unavailable, is_unavailable

    if not is_unavailable(err):
        raise err
    fail(f"{describe_unavailable(err)} (at {settings.temporal_address})")
    raise err  # not reached: fail exits


@schedules_app.command("apply")
def apply_command() -> None:
    """Create or update the drift-sweep Schedule to the settings (idempotent)."""
    from starter.cli import run_client, settings_or_exit
    from starter.schedules import SCHEDULE_ID, apply_schedules

    settings = settings_or_exit()

    async def go() -> None:
        client = await _temporal(settings)
        try:
            done = await apply_schedules(client, settings)
        except Exception as err:
            _unreachable(settings, err)
        every = settings.recompute.sweep_interval_seconds
        typer.echo(f"schedule {SCHEDULE_ID} {done}: DriftSweep every {every:g} s on task queue "
                   f"{settings.temporal_task_queue}")  # fmt: skip

    run_client(go())


@schedules_app.command("show")
def show_command(
    runs: int = typer.Option(5, "--runs", min=1, max=10, help="How many recent runs to show"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """The drift-sweep Schedule: next run times and the latest runs' results."""
    from temporalio.service import RPCError, RPCStatusCode

    from starter.cli import fail, run_client, settings_or_exit
    from starter.schedules import SCHEDULE_ID, describe_schedules

    settings = settings_or_exit()

    async def go() -> None:
        client = await _temporal(settings)
        try:
            view = await describe_schedules(client, runs)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                fail(f"no schedule {SCHEDULE_ID}: run `dunning schedules apply` (or `dunning dev`)")
            _unreachable(settings, err)
        except Exception as err:
            _unreachable(settings, err)
        if as_json:
            typer.echo(json.dumps({
                "schedule_id": view.schedule_id, "every_seconds": [e.total_seconds() for e in view.every],
                "paused": view.paused, "next_runs": [t.isoformat() for t in view.next_runs],
                "skipped_overlap": view.skipped_overlap,
                "recent": [{"workflow_id": r.workflow_id, "started_at": r.started_at.isoformat(), "status": r.status,
                            "summary": r.summary.model_dump() if r.summary else None} for r in view.recent],
            }, indent=2))  # fmt: skip
            return
        every = ", ".join(f"{e.total_seconds():g} s" for e in view.every)
        typer.echo(f"schedule   {view.schedule_id}: DriftSweep every {every}"
                   + (f" (PAUSED{': ' + view.note if view.note else ''})" if view.paused else ""))  # fmt: skip
        typer.echo(f"next runs  {', '.join(t.isoformat() for t in view.next_runs[:3]) or '-'}")
        if view.skipped_overlap:
            typer.echo(f"skipped    {view.skipped_overlap} run(s): the previous sweep was still running")
        if not view.recent:
            typer.echo("recent     - (no run yet)")
        for r in view.recent:
            s = r.summary
            counts = (f": checked {s.checked}, drifted {s.drifted}, applied {s.applied}, deferred {s.deferred}, "
                      f"errors {s.errors}") if s else ""  # fmt: skip
            typer.echo(f"recent     {r.started_at.isoformat()}  {r.workflow_id}  {r.status}{counts}")

    run_client(go())
