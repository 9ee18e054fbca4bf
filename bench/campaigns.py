"""Campaign benchmarks against the bare baseline (bench/baseline.py), on one dev server:

    throughput at equal work   N campaigns on days long enough that no worker falls behind
    throughput at saturation   N campaigns on 1-day-per-second-or-less days, all at once
    CPU-seconds per campaign   of the worker process and of the Temporal server process
    history shape              events, activities, timers, search-attribute upserts, markers
    scale-out                  (--scale-out) two engine workers on one task queue vs one

Checks (engine): every campaign ended exhausted, 3 emails per campaign at distinct
Message-IDs with no second copy, a `dunning.step_sent` ledger row per email, and how many
actions were skipped (ledger `dunning.action_skipped`).

    python -m bench.campaigns [--n 100] [--rounds 3] [--day-seconds 0.5] [--saturate-day 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench import harness
from bench.baseline import BareCampaign, BareInput, actions_for
from dunning.store.store import Store
from starter.client import DunningClient
from workflows.campaign import DunningCampaign, workflow_id

EMAILS = 3
CONCURRENCY = 16


@dataclass
class Round:
    kind: str
    n: int
    seconds: float
    worker_cpu: float
    server_cpu: float
    ids: list[str]
    checks: dict[str, bool]
    skipped: int = 0


async def run_round(kind: str, server: harness.Server, sink: harness.Sink, n: int, day_seconds: float,
                    workers: int = 1, db_url: str | None = None) -> Round:  # fmt: skip
    home = harness.tempdir(f"bench-{kind}-")
    tq = f"bench-{uuid.uuid4().hex[:8]}"
    url = db_url or f"sqlite:///{home / 'dunning.db'}"
    overrides = harness.engine_settings(home, server.address, url, sink.port, day_seconds, tq)
    settings = harness.settings_from(overrides)
    store = Store.open(settings.db_url)
    store.migrate()
    sink.reset()
    client = server.client
    tag = uuid.uuid4().hex[:6]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(harness.worker(kind, overrides)) for _ in range(workers)]
        w0, s0 = sum(p.cpu() for p in procs), server.cpu()
        with harness.Timer() as timer:
            if kind == "engine":
                ids = await _start_engine(DunningClient(client, store, settings), n, tag)
                results = await asyncio.gather(*(_engine_result(client, i) for i in ids))
            else:
                ids = await _start_bare(client, settings, n, tag, day_seconds, tq)
                results = await asyncio.gather(*(client.get_workflow_handle(i).result() for i in ids))
        w1, s1 = sum(p.cpu() for p in procs), server.cpu()
    checks, skipped = _checks(kind, n, results, sink, store, settings)
    store.dispose()
    return Round(kind, n, timer.seconds, w1 - w0, s1 - s0, ids, checks, skipped)


async def _start_engine(dc: DunningClient, n: int, tag: str) -> list[str]:
    subs = [f"sub_{tag}_{i}" for i in range(n)]
    await harness.gather_limited(CONCURRENCY, [
        dc.fail_payment(s, f"cus_{s}", f"{s}@example.com", decline_class="soft", amount_due=4900, currency="usd")
        for s in subs
    ])  # fmt: skip
    return [workflow_id(s) for s in subs]


async def _engine_result(client: Client, wf_id: str) -> Any:
    return await client.get_workflow_handle_for(DunningCampaign.run, wf_id).result()


async def _start_bare(client: Client, settings: Any, n: int, tag: str, day_seconds: float, tq: str) -> list[str]:
    inp = BareInput(day_seconds=day_seconds, actions=actions_for(settings))
    ids = [f"bare-{tag}-{i}" for i in range(n)]
    await harness.gather_limited(CONCURRENCY, [
        client.start_workflow(BareCampaign.run, inp, id=i, task_queue=tq) for i in ids
    ])  # fmt: skip
    return ids


def _checks(kind: str, n: int, results: list, sink: harness.Sink, store: Store, settings: Any) -> tuple[dict, int]:
    if kind != "engine":
        expected = len(actions_for(settings))
        return {f"baseline: every campaign did its {expected} effects": all(r == expected for r in results)}, 0
    with store.engine.connect() as conn:
        ledger: dict[str, int] = dict(conn.execute(text("SELECT type, count(*) FROM dunning_events GROUP BY type")).all())
    outcomes = Counter(r.outcome for r in results)
    skipped = int(ledger.get("dunning.action_skipped", 0))
    checks = {
        f"every campaign ended exhausted {dict(outcomes)}": outcomes == Counter({"exhausted": n}),
        f"{EMAILS} emails per campaign at distinct Message-IDs ({sink.distinct} of {EMAILS * n})":
            sink.distinct == EMAILS * n,
        f"no second copy of any email ({sink.copies} copies)": sink.copies == sink.distinct,
        f"a dunning.step_sent ledger row per email ({ledger.get('dunning.step_sent', 0)})":
            ledger.get("dunning.step_sent", 0) == sink.distinct,
    }  # fmt: skip
    return checks, skipped


async def history_shape(client: Client, wf_id: str) -> Counter:
    shape: Counter = Counter()
    async for ev in client.get_workflow_handle(wf_id).fetch_history_events():
        shape["events"] += 1
        name = EventType.Name(ev.event_type)
        for key, label in (("ACTIVITY_TASK_SCHEDULED", "activities"), ("TIMER_STARTED", "timers"),
                           ("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES", "search-attribute upserts"),
                           ("MARKER_RECORDED", "markers"), ("WORKFLOW_TASK_COMPLETED", "workflow tasks"),
                           ("WORKFLOW_PROPERTIES_MODIFIED", "properties modified")):  # fmt: skip
            if name.endswith(key):
                shape[label] += 1
    return shape


def billable_actions(shape: Counter) -> int:
    """Temporal Cloud actions of one run, counted high: the start, each activity scheduled,
    each local activity (Cloud bills the local activities of one workflow task as one),
    each timer, each search-attribute upsert, each patch marker."""
    return 1 + shape["activities"] + shape["timers"] + shape["search-attribute upserts"] + shape["markers"]


async def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--day-seconds", type=float, default=2.0, help="equal work: no worker falls behind")
    ap.add_argument("--saturate-n", type=int, default=200)
    ap.add_argument("--saturate-day", type=float, default=1.0, help="saturation: 14-second campaigns, all at once")
    ap.add_argument("--scale-out", action="store_true", help="also: two engine workers on one task queue")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    harness.clean_environment()
    ok = True
    async with harness.dev_server(harness.tempdir("bench-temporal-")) as server:
        with harness.Sink() as sink:
            ok &= await equal_work(server, sink, args)
            ok &= await saturation(server, sink, args)
            if args.scale_out:
                ok &= await scale_out(server, sink, args)
    return ok


async def equal_work(server: harness.Server, sink: harness.Sink, args: argparse.Namespace) -> bool:
    wall = harness.Figure("campaigns per second", "1/s", target=">= 0.85")
    wcpu = harness.Figure("worker CPU per campaign", "ms", target="<= 1.25")
    scpu = harness.Figure("server CPU per campaign", "ms", target="<= 1.1")
    checks: dict[str, bool] = {}
    last: dict[str, Round] = {}
    for pair in harness.order(args.rounds):
        for kind in pair:
            r = await run_round(kind, server, sink, args.n, args.day_seconds)
            last[kind] = r
            side = "engine" if kind == "engine" else "baseline"
            getattr(wall, side).append(r.n / r.seconds)
            getattr(wcpu, side).append(1000 * r.worker_cpu / r.n)
            getattr(scpu, side).append(1000 * r.server_cpu / r.n)
            checks.update(r.checks)
    engine = await history_shape(server.client, last["engine"].ids[0])
    bare = await history_shape(server.client, last["baseline"].ids[0])
    shape = [harness.Figure(k, "per campaign", [float(engine[k])], [float(bare[k])])
             for k in ("events", "activities", "timers", "search-attribute upserts", "markers", "workflow tasks")]
    shape.append(harness.Figure("billable actions", "per campaign", [float(billable_actions(engine))],
                                [float(billable_actions(bare))]))  # fmt: skip
    title = f"campaigns at equal work: {args.n} campaigns x {args.rounds} rounds, {args.day_seconds:g}-second days"
    return harness.report(title, [wall, wcpu, scpu, *shape], checks, args.out)


async def saturation(server: harness.Server, sink: harness.Sink, args: argparse.Namespace) -> bool:
    wall = harness.Figure("campaigns per second", "1/s", target=">= 0.85")
    wcpu = harness.Figure("worker CPU per campaign", "ms", target="<= 1.25")
    skips = harness.Figure("skipped actions", "count")
    checks: dict[str, bool] = {}
    for pair in harness.order(args.rounds):
        for kind in pair:
            r = await run_round(kind, server, sink, args.saturate_n, args.saturate_day)
            side = "engine" if kind == "engine" else "baseline"
            getattr(wall, side).append(r.n / r.seconds)
            getattr(wcpu, side).append(1000 * r.worker_cpu / r.n)
            getattr(skips, side).append(float(r.skipped))
            checks.update(r.checks)
    checks["the skip rule never fired for the engine's own lateness"] = not any(skips.engine)
    title = f"campaigns at saturation: {args.saturate_n} at once x {args.rounds} rounds, {args.saturate_day:g}-second days"
    return harness.report(title, [wall, wcpu, skips], checks, args.out)


async def scale_out(server: harness.Server, sink: harness.Sink, args: argparse.Namespace) -> bool:
    """Engine with two worker processes vs one (the 'baseline' column is one worker)."""
    wall = harness.Figure("campaigns per second, 2 workers vs 1", "1/s")
    wcpu = harness.Figure("worker CPU per campaign, 2 workers vs 1", "ms")
    checks: dict[str, bool] = {}
    for r in range(args.rounds):
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            rd = await run_round("engine", server, sink, args.saturate_n, args.saturate_day, workers=workers)
            side = "engine" if workers == 2 else "baseline"
            getattr(wall, side).append(rd.n / rd.seconds)
            getattr(wcpu, side).append(1000 * rd.worker_cpu / rd.n)
            checks.update({f"{workers} worker(s): {k}": v for k, v in rd.checks.items()})
    return harness.report(f"scale-out: {args.saturate_n} campaigns, two workers on one task queue vs one",
                          [wall, wcpu], checks, args.out)  # fmt: skip


if __name__ == "__main__":
    passed = asyncio.run(main())
    sys.stdout.flush()
    os._exit(0 if passed else 1)  # the SDK's threads can abort a normal shutdown (see starter.cli.run_client)
