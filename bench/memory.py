"""Worker memory per cached campaign, engine vs the bare baseline (bench/baseline.py): the
resident set of a worker process holding N sleeping campaigns in its workflow cache.

For each size N (default 100, 1,000 and 5,000) and each kind, interleaved (baseline,
engine, engine, baseline, ...), on one dev server:

  1. a fresh worker process (`bench.worker_proc`, engine or baseline) on a fresh task
     queue, its SDK cache sized N + a margin (`max_cached`), so nothing need be evicted;
  2. RSS_0: its RSS (/proc) once it is ready and its CPU has been idle for a while;
  3. N campaigns started on real days (day_seconds = 86400), the engine's through its
     client (`fail_payment`, decline class soft), the baseline's with `start_workflow`;
     each does its day-0 work (engine: begin, first email, ...; baseline: its day-0
     effect) and then sleeps on a one-day timer;
  4. once the engine's N first emails are at the SMTP sink and the worker's CPU has been
     idle again for a while, RSS_N; then every campaign is asked (engine: the `state`
     query; baseline: `done`) whether it did its day-0 work and sleeps (after the read,
     so the queries are not in RSS_N; if one had not, the worker settles and RSS_N is
     read again);
  5. per campaign = (RSS_N - RSS_0) / N, in KB; the worker is stopped and the N
     campaigns terminated, so they do not run on into later rounds.

RSS_N - RSS_0 also holds what the first campaign loads once (modules, templates, pools),
spread over N: compare the sizes to see the per-campaign slope.

Checks: every campaign did its day-0 work and sleeps; engine: N first emails at distinct
Message-IDs with no second copy; no workflow task failed in the worker or timed out while
it waited there (the SDK's warnings, read from the worker's stdout); whether the SDK's
cache could hold all N (max_cached >= N: evictions themselves are not observed).

    python -m bench.memory [--sizes 100,1000,5000] [--rounds 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError

from bench import harness
from bench.baseline import BareCampaign, BareInput, actions_for
from dunning.store.store import Store
from starter.client import DunningClient
from workflows.campaign import DunningCampaign, workflow_id

CONCURRENCY = 16
MARGIN = 100  # cache slots beyond N
IDLE_CPU = 0.02  # CPU-seconds per IDLE_WINDOW below which the worker counts as idle
IDLE_WINDOW = 1.0
IDLE_WINDOWS = 2  # in a row
SETTLE_TIMEOUT = 120.0
QUERY_TIMEOUT = timedelta(seconds=10)


@dataclass
class Round:
    kind: str
    n: int
    rss0: int
    rssn: int
    max_cached: int
    seconds: float  # from the first start until every campaign was seen asleep
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def per_campaign_kb(self) -> float:
        return (self.rssn - self.rss0) / self.n / 1024


class Drain(threading.Thread):
    """Reads a worker's stdout to its end: the SDK's core logs its warnings there, and
    harness.worker reads only the `ready` line, so a full pipe would stop the worker
    mid-write. Counts workflow tasks that took over 5 seconds (TMPRL1104), those the
    worker failed (e.g. the SDK's deadlock detector: no yield within 2 s) and those the
    server no longer knew when the worker completed them (they timed out waiting in the
    worker); other lines are passed on to stderr."""

    def __init__(self, proc: harness.WorkerProc) -> None:
        super().__init__(daemon=True)
        self.out = proc.proc.stdout
        self.slow = 0
        self.timed_out = 0
        self.failed = 0

    def run(self) -> None:
        if self.out is None:
            return
        for line in iter(self.out.readline, b""):
            if b"TMPRL1104" in line:
                self.slow += 1
            elif b"Task not found when completing" in line:
                self.timed_out += 1
            elif b"Failing workflow task" in line:
                self.failed += 1
            elif b"activity_failure_include_heartbeat" not in line:  # the dev server's version: once per worker
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()


async def settle(proc: harness.WorkerProc) -> None:
    """Until the worker's CPU has been idle for IDLE_WINDOWS windows in a row (or SETTLE_TIMEOUT)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    quiet = 0
    while quiet < IDLE_WINDOWS and time.monotonic() < deadline:
        before = proc.cpu()
        await asyncio.sleep(IDLE_WINDOW)
        quiet = quiet + 1 if proc.cpu() - before < IDLE_CPU else 0


async def sleeping_after_day0(client: Client, kind: str, wf_id: str) -> bool:
    """Did the campaign do its day-0 work, and is it now waiting for a later one?"""
    try:
        if kind == "engine":
            handle = client.get_workflow_handle_for(DunningCampaign.run, wf_id)
            st = await handle.query(DunningCampaign.state, rpc_timeout=QUERY_TIMEOUT)
            return st.steps_sent == ["first_notice"] and st.next_step is not None and st.next_step.key != "first_notice"
        bare = client.get_workflow_handle_for(BareCampaign.run, wf_id)
        return await bare.query(BareCampaign.done, rpc_timeout=QUERY_TIMEOUT) == 1
    except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
        return False  # not there yet (or stuck): asked again after the next settle


async def unconfirmed(client: Client, kind: str, ids: set[str]) -> set[str]:
    answers = await harness.gather_limited(CONCURRENCY, [sleeping_after_day0(client, kind, i) for i in sorted(ids)])
    return {i for i, ok in zip(sorted(ids), answers, strict=True) if not ok}


async def terminate(client: Client, ids: list[str]) -> None:
    async def one(wf_id: str) -> None:
        try:
            await client.get_workflow_handle(wf_id).terminate("bench.memory round over")
        except RPCError:
            pass  # not started, or already closed

    await harness.gather_limited(2 * CONCURRENCY, [one(i) for i in ids])


async def run_round(kind: str, server: harness.Server, sink: harness.Sink, n: int) -> Round:
    home = harness.tempdir(f"bench-memory-{kind}-")
    tq = f"bench-{uuid.uuid4().hex[:8]}"
    overrides = harness.engine_settings(home, server.address, f"sqlite:///{home / 'dunning.db'}", sink.port, 86400.0, tq)
    settings = harness.settings_from(overrides)
    store = Store.open(settings.db_url)
    if kind == "engine":
        store.migrate()
    sink.reset()
    client = server.client
    tag = uuid.uuid4().hex[:6]
    max_cached = n + MARGIN
    ids: list[str] = []
    pending: set[str] = set()
    try:
        with harness.worker(kind, overrides, max_cached=max_cached) as proc:
            drain = Drain(proc)
            drain.start()
            await settle(proc)
            rss0 = proc.rss()
            began = time.monotonic()
            deadline = time.monotonic() + 60 + 0.2 * n
            if kind == "engine":
                subs = [f"sub_{tag}_{i}" for i in range(n)]
                ids = [workflow_id(s) for s in subs]
                dc = DunningClient(client, store, settings)
                await harness.gather_limited(CONCURRENCY, [
                    dc.fail_payment(s, f"cus_{s}", f"{s}@example.com", decline_class="soft", amount_due=4900,
                                    currency="usd")
                    for s in subs
                ])  # fmt: skip
                while sink.distinct < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
            else:
                inp = BareInput(day_seconds=settings.day_seconds, actions=actions_for(settings))
                ids = [f"bare-{tag}-{i}" for i in range(n)]
                await harness.gather_limited(CONCURRENCY, [
                    client.start_workflow(BareCampaign.run, inp, id=i, task_queue=tq) for i in ids
                ])  # fmt: skip
            pending = set(ids)
            while True:
                await settle(proc)
                rssn = proc.rss()
                pending = await unconfirmed(client, kind, pending)
                if not pending or time.monotonic() > deadline:
                    break
            seconds = time.monotonic() - began
        drain.join(5)  # the worker has exited: the rest of its output
    finally:
        store.dispose()
        await terminate(client, ids)
    checks = {
        f"{kind}, {n}: every campaign did its day-0 work and sleeps ({n - len(pending)} of {n})": not pending,
        f"{kind}, {n}: the SDK's cache could hold all {n} (max_cached {max_cached})": max_cached >= n,
        f"{kind}, {n}: no workflow task failed ({drain.failed}) or timed out in the worker ({drain.timed_out})":
            not drain.failed and not drain.timed_out,
    }  # fmt: skip
    if kind == "engine":
        checks[f"engine, {n}: {n} first emails at distinct Message-IDs ({sink.distinct}), no second copy "
               f"({sink.copies} copies)"] = sink.distinct == n and sink.copies == n  # fmt: skip
    r = Round(kind, n, rss0, rssn, max_cached, seconds, checks)
    print(f"  {kind:8} N={n}: RSS {rss0 / 2**20:.0f} -> {rssn / 2**20:.0f} MB, {r.per_campaign_kb:.0f} KB per campaign "
          f"({'all' if not pending else f'{n - len(pending)} of {n}'} asleep after {seconds:.0f} s; "
          f"{drain.slow} workflow tasks over 5 s)", flush=True)  # fmt: skip
    return r


async def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000", help="campaigns held per worker, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    harness.clean_environment()
    idle = harness.Figure("worker RSS, ready and idle", "MB")
    figures: list[harness.Figure] = [idle]
    checks: dict[str, bool] = {}
    async with harness.dev_server(harness.tempdir("bench-temporal-")) as server:
        with harness.Sink() as sink:
            for n in sizes:
                per = harness.Figure(f"RSS per sleeping campaign, N={n}", "KB", target="<= 1.2")
                held = harness.Figure(f"worker RSS with N={n}", "MB")
                for pair in harness.order(args.rounds):
                    for kind in pair:
                        r = await run_round(kind, server, sink, n)
                        getattr(per, kind).append(r.per_campaign_kb)
                        getattr(held, kind).append(r.rssn / 2**20)
                        getattr(idle, kind).append(r.rss0 / 2**20)
                        for name, ok in r.checks.items():
                            checks[name] = checks.get(name, True) and ok
                figures += [per, held]
    title = f"worker memory per sleeping campaign: N = {args.sizes} x {args.rounds} rounds, 86400-second days"
    return harness.report(title, figures, checks, args.out)


if __name__ == "__main__":
    raise SystemExit(0 if asyncio.run(main()) else 1)
