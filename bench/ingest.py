"""Webhook ingest against the bare baseline (bench/baseline.py), on one dev server, on
SQLite and on PostgreSQL:

    engine     signed `POST /webhooks/fake` payment_failed events (a soft decline), one per
               distinct subscription, to `dunning api` in its own process, with an engine
               worker running: the API answers once the event's one transaction (inbox
               row, decision, projection) is committed and Temporal has started the
               campaign with it, and the row is marked dispatched (a group commit)
    baseline   a bare signal-with-start of `BareCampaign` from the client, with a baseline
               worker running

Each side sends N requests, `--concurrency` at a time, after a few untimed warm-up requests;
a request's latency is taken around the one call. Days are 86,400 seconds: campaigns sleep
after their day-0 actions. Each engine round gets a fresh database (PostgreSQL: a database
`bench_<hex>`, dropped afterwards). Figures: requests per second, latency p50 and p99, and
CPU per request of the Temporal server, of the worker and (engine only) of the API process.
Checks: no error (non-2xx or exception) on either side; every engine request answered
`started`, with a dispatched inbox row per request.

    python -m bench.ingest [--n 1000] [--rounds 3] [--concurrency 16] [--db sqlite|postgres|both] [--out FILE]

`--profile PREFIX`: the engine's API process runs under cProfile (every thread); its
stats go to PREFIX-<db>.prof (the last engine round's): exact call counts (transactions,
statements, Temporal calls per event). A profiled run's figures are not the engine's, and
on SQLite the slowed API can exceed its 10-second dispatch timeout (errors, then); a
sampling profiler (py-spy) attached to the `starter.cli api` process does not. Read with

    python -c "import pstats; pstats.Stats('PREFIX-sqlite.prof').sort_stats('cumulative')
               .print_stats('starter/|dunning/|sqlalchemy', 20)"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from sqlalchemy import text

from bench import harness
from bench.baseline import BareCampaign, BareInput, actions_for
from dunning.providers.fake import build_fake_event, sign_fake
from dunning.store.store import Store

SECRET = "bench-ingest-secret"
DAY_SECONDS = 86400.0
WARMUP = 8
PG_ADMIN = ("postgresql://root@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test")

# `dunning api` under cProfile in every thread (the store runs in asyncio.to_thread); the
# CLI leaves through os._exit, so that is where the stats are written.
PROFILED = """
import cProfile, os, pstats, sys, threading
profiles = [cProfile.Profile()]
def per_thread(*_):
    profiles.append(p := cProfile.Profile())
    p.enable()
def dump(code, _exit=os._exit):
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    stats.dump_stats(OUT)
    _exit(code)
OUT, sys.argv = sys.argv[1], ["dunning", "api"]
threading.setprofile(per_thread)
os._exit = dump
profiles[0].enable()
from starter.cli import main
main()
"""


@dataclass
class Round:
    seconds: float
    latencies: list[float]  # seconds, one per timed request
    outcomes: list[str | None]  # None: an error
    server_cpu: float
    worker_cpu: float
    api_cpu: float | None = None  # engine: the API process
    inbox_started: int = 0  # engine: dispatched inbox rows that started a campaign (warm-up included)


def event_body(sub: str) -> bytes:
    event = build_fake_event("payment_failed", sub, customer_id=f"cus_{sub}", customer_email=f"{sub}@example.com",
                             invoice_id=f"in_{sub}", decline_code="insufficient_funds", amount_due=4900,
                             currency="usd")  # fmt: skip
    return json.dumps(event).encode()


async def timed(calls: list[Callable[[], Awaitable[str | None]]], concurrency: int) -> tuple[float, list[float], list]:
    """Run the calls `concurrency` at a time: (wall seconds, latencies, outcomes)."""
    latencies: list[float] = []
    outcomes: list[str | None] = []

    async def one(call: Callable[[], Awaitable[str | None]]) -> None:
        start = time.perf_counter()
        try:
            outcome = await call()
        except Exception:
            outcome = None
        latencies.append(time.perf_counter() - start)
        outcomes.append(outcome)

    with harness.Timer() as timer:
        await harness.gather_limited(concurrency, [one(c) for c in calls])
    return timer.seconds, latencies, outcomes


# --- engine ------------------------------------------------------------------------------
@contextlib.contextmanager
def database(db: str, home: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in `home`, or a PostgreSQL database dropped afterwards."""
    if db == "sqlite":
        yield f"sqlite:///{home / 'dunning.db'}"
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    for admin in PG_ADMIN:
        with contextlib.suppress(psycopg.OperationalError):
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            break
    else:
        raise RuntimeError(f"PostgreSQL is unreachable at {' or '.join(PG_ADMIN)}")
    try:
        yield admin.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.asynccontextmanager
async def api(overrides: dict[str, Any], home: Path, profile: Path | None) -> AsyncIterator[subprocess.Popen]:
    """`dunning api` in its own process with exactly these settings; yields it once /readyz is 200."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "OTEL_"))}
    env.update({f"DUNNING_{k.upper()}": str(v) for k, v in overrides.items() if v is not None})
    args = [sys.executable, "-m", "starter.cli", "api"]
    if profile is not None:
        args = [sys.executable, "-c", PROFILED, str(profile)]
    log = (home / "api.log").open("wb")
    proc = subprocess.Popen(args, cwd=harness.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{overrides['api_port']}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(f"the API exited {proc.returncode}: see {home / 'api.log'}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"the API was not ready within 60 s: see {home / 'api.log'}")
        yield proc
    finally:
        harness.stop(proc, 60)
        log.close()


async def engine_round(server: harness.Server, sink: harness.Sink, db: str, n: int, concurrency: int,
                       profile: Path | None) -> Round:  # fmt: skip
    home = harness.tempdir("bench-ingest-engine-")
    tag = uuid.uuid4().hex[:6]
    with database(db, home) as url:
        overrides = harness.engine_settings(home, server.address, url, sink.port, DAY_SECONDS, f"bench-{tag}",
                                            fake_webhook_secret=SECRET, api_port=harness.free_port())  # fmt: skip
        store = Store.open(url)  # migrated before the API and the worker start
        try:
            base = f"http://127.0.0.1:{overrides['api_port']}"
            with harness.worker("engine", overrides) as worker:
                async with api(overrides, home, profile) as proc, httpx.AsyncClient(base_url=base, timeout=60) as http:

                    def post(sub: str) -> Callable[[], Awaitable[str | None]]:
                        body = event_body(sub)

                        async def call() -> str | None:
                            headers = {"X-Dunning-Signature": sign_fake(body, SECRET, int(time.time())),
                                       "Content-Type": "application/json"}  # fmt: skip
                            reply = await http.post("/webhooks/fake", content=body, headers=headers)
                            return reply.json().get("result", "") if reply.is_success else None

                        return call

                    await timed([post(f"warm_{tag}_{i}") for i in range(WARMUP)], concurrency)
                    cpu = server.cpu(), worker.cpu(), harness.cpu_seconds(proc.pid)
                    seconds, latencies, outcomes = await timed([post(f"sub_{tag}_{i}") for i in range(n)], concurrency)
                    cpu = server.cpu() - cpu[0], worker.cpu() - cpu[1], harness.cpu_seconds(proc.pid) - cpu[2]
            with store.engine.connect() as conn:
                started = conn.execute(text("SELECT count(*) FROM inbox WHERE status = 'dispatched' "
                                            "AND reason = 'started'")).scalar_one()  # fmt: skip
        finally:
            store.dispose()
    return Round(seconds, latencies, outcomes, *cpu, started)


# --- baseline ----------------------------------------------------------------------------
async def baseline_round(server: harness.Server, sink: harness.Sink, n: int, concurrency: int) -> Round:
    home = harness.tempdir("bench-ingest-bare-")
    tag = uuid.uuid4().hex[:6]
    overrides = harness.engine_settings(home, server.address, None, sink.port, DAY_SECONDS, f"bench-{tag}")
    inp = BareInput(day_seconds=DAY_SECONDS, actions=actions_for(harness.settings_from(overrides)))

    def start(sub: str) -> Callable[[], Awaitable[str | None]]:
        body = event_body(sub).decode()

        async def call() -> str | None:
            await server.client.start_workflow(
                BareCampaign.run, inp, id=f"bare-{sub}", task_queue=f"bench-{tag}",
                start_signal="payment_failed", start_signal_args=[body],
            )  # fmt: skip
            return "started"

        return call

    with harness.worker("baseline", overrides) as worker:
        await timed([start(f"warm_{tag}_{i}") for i in range(WARMUP)], concurrency)
        cpu = server.cpu(), worker.cpu()
        seconds, latencies, outcomes = await timed([start(f"sub_{tag}_{i}") for i in range(n)], concurrency)
        cpu = server.cpu() - cpu[0], worker.cpu() - cpu[1]
    return Round(seconds, latencies, outcomes, *cpu)


# --- one figure set per database ---------------------------------------------------------
def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(server: harness.Server, sink: harness.Sink, db: str, args: argparse.Namespace) -> bool:
    rate = harness.Figure("requests per second", "1/s", target=">= 0.85")
    p50 = harness.Figure("latency p50", "ms")
    p99 = harness.Figure("latency p99", "ms", target="<= 1.3")
    scpu = harness.Figure("server CPU per request", "ms")
    wcpu = harness.Figure("worker CPU per request", "ms")
    acpu = harness.Figure("API process CPU per request", "ms")  # engine only
    errors = {"engine": 0, "baseline": 0}
    answered = inbox = 0
    profile = Path(f"{args.profile}-{db}.prof") if args.profile else None
    for pair in harness.order(args.rounds):
        for kind in pair:
            if kind == "engine":
                r = await engine_round(server, sink, db, args.n, args.concurrency, profile)
                answered += r.outcomes.count("started")
                inbox += r.inbox_started
            else:
                r = await baseline_round(server, sink, args.n, args.concurrency)
            errors[kind] += r.outcomes.count(None)
            for fig, value in ((rate, args.n / r.seconds), (p50, 1000 * percentile(r.latencies, 50)),
                               (p99, 1000 * percentile(r.latencies, 99)), (scpu, 1000 * r.server_cpu / args.n),
                               (wcpu, 1000 * r.worker_cpu / args.n)):
                getattr(fig, kind).append(value)  # fmt: skip
            if r.api_cpu is not None:
                acpu.engine.append(1000 * r.api_cpu / args.n)
    total = args.n * args.rounds
    checks = {
        f"engine: no error ({errors['engine']} of {total})": errors["engine"] == 0,
        f"baseline: no error ({errors['baseline']} of {total})": errors["baseline"] == 0,
        f"engine: every request answered 'started' ({answered} of {total})": answered == total,
        f"engine: a dispatched inbox row per request ({inbox} of {total + WARMUP * args.rounds})":
            inbox == total + WARMUP * args.rounds,
    }  # fmt: skip
    title = f"webhook ingest on {db}: {args.n} subscriptions x {args.rounds} rounds, {args.concurrency} concurrent"
    if profile:
        title += " (PROFILED: not the engine's figures)"
    return harness.report(title, [rate, p50, p99, scpu, wcpu, acpu], checks, args.out)


async def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="timed requests per side and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile", help="PREFIX: run the engine's API under cProfile, stats to PREFIX-<db>.prof")
    args = ap.parse_args(argv)
    harness.clean_environment()
    ok = True
    async with harness.dev_server(harness.tempdir("bench-temporal-")) as server:
        with harness.Sink() as sink:
            for db in ("sqlite", "postgres") if args.db == "both" else (args.db,):
                ok &= await measure(server, sink, db, args)
    return ok


if __name__ == "__main__":
    passed = asyncio.run(main())
    sys.stdout.flush()
    os._exit(0 if passed else 1)  # the SDK's threads can abort a normal shutdown (see starter.cli.run_client)
