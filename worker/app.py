"""Build the Temporal client and the worker that runs campaigns and the drift sweep; run
it (with the outbox deliverer when `outbound_urls` is set) until SIGTERM/SIGINT, then stop
gracefully.

Graceful stop: the worker stops polling for new tasks; activities in flight get
`shutdown_grace_seconds` to finish, then are cancelled (the SDK's
`graceful_shutdown_timeout`) and reported back to Temporal, which retries them on another
worker; the outbox deliverer finishes the POST in flight. If something still runs
`SHUTDOWN_SLACK` seconds after the grace period (an activity that ignores cancellation),
the process gives up waiting and exits anyway: Temporal retries that activity after its
timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.campaign import CampaignActivities
from activities.outbound import OutboundActivities
from activities.payments import PaymentActivities
from activities.sweep import SweepActivities
from dunning.config import Settings
from dunning.store.store import Store
from starter import telemetry
from starter.outbound import OutboxDeliverer
from worker import search_attributes
from worker.shutdown import stop_on_signals
from workflows.campaign import DunningCampaign
from workflows.drift_sweep import DriftSweep

log = logging.getLogger("dunning.worker")
# The sandbox re-imports a workflow's module for every run and keeps that copy while the run
# is cached (~65 KB of code objects per campaign). The engine's workflow modules hold no
# state and do no I/O (tests/test_workflow_purity.py reads them), so they are passed
# through like the rest of the engine's pure code; the sandbox still isolates every other
# import and the replay tests still prove determinism.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows.campaign", "workflows.drift_sweep")
)
SHUTDOWN_SLACK = 5.0  # seconds past the grace period before the process stops waiting


async def connect(settings: Settings) -> Client:
    """The one way every process reaches Temporal: same converter everywhere, and the
    tracing interceptor (its workers inherit it); the SDK's Prometheus endpoint when
    DUNNING_WORKER_METRICS_BIND is set (starter.telemetry)."""
    telemetry.setup_tracing()
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=settings.temporal_tls,
        api_key=settings.temporal_api_key,
        interceptors=telemetry.tracing_interceptors(),
        runtime=telemetry.temporal_runtime(),
    )


def _traced(client: Client) -> bool:
    return any(isinstance(i, TracingInterceptor) for i in client.config().get("interceptors", ()))


def build_worker(client: Client, settings: Settings, store: Store, task_queue: str | None = None) -> Worker:
    from starter.client import DunningClient  # starter.client imports this module (connect)

    payments = PaymentActivities(settings, store)
    sweep = SweepActivities(settings, store, DunningClient(client, store, settings))
    activities = [
        *CampaignActivities(settings, store).all(),
        payments.retry_payment,
        payments.terminal_action,
        OutboundActivities(store).emit,
        sweep.sweep_candidates,
        sweep.sweep_reconcile,
    ]
    return Worker(
        client,
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=[DunningCampaign, DriftSweep],
        workflow_runner=WORKFLOW_RUNNER,
        activities=activities,
        # every activity is async; the store's blocking calls run on the loop's default
        # executor, sized by `worker_db_threads` (serve_worker)
        max_cached_workflows=settings.worker_max_cached_workflows,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=settings.shutdown_grace_seconds),
        # a client from `connect` brings the tracing interceptor; any other gets it here
        interceptors=[] if _traced(client) else telemetry.tracing_interceptors(),
    )


def size_db_threads(settings: Settings) -> None:
    """The thread pool `asyncio.to_thread` uses for the store's blocking calls."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.worker_db_threads, thread_name_prefix="dunning-db")
    asyncio.get_running_loop().set_default_executor(pool)


async def serve_worker(client: Client, settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Run the worker, and the outbox deliverer when outbound URLs are configured, until
    `stop` is set (or the worker fails: that error is raised after the stop)."""
    size_db_threads(settings)
    worker = build_worker(client, settings, store)
    deliverer_stop = asyncio.Event()
    tasks = [asyncio.create_task(worker.run(), name="dunning-worker")]
    if settings.outbound_urls:
        deliverer = OutboxDeliverer.from_settings(settings, store)
        tasks.append(asyncio.create_task(deliverer.run(deliverer_stop), name="dunning-outbox"))
    log.info("worker running on task queue %s", settings.temporal_task_queue)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        grace = settings.shutdown_grace_seconds
        log.info("worker stopping: no new tasks; activities in flight get up to %g s, then are handed back", grace)
        deliverer_stop.set()
        shutdown = asyncio.create_task(worker.shutdown())
        _, late = await asyncio.wait([shutdown, *tasks], timeout=grace + SHUTDOWN_SLACK)
        if late:
            log.error("worker still busy %g s after the stop: exiting anyway; Temporal retries what was in flight",
                      grace + SHUTDOWN_SLACK)  # fmt: skip
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=1)
    failures = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
    if failures and not stop.is_set():
        raise failures[0]  # type: ignore[misc]
    log.info("worker stopped")


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """`dunning worker` / `python -m worker`: until SIGTERM or SIGINT (or `stop`)."""
    # httpx logs every request's full URL at INFO; an outbound URL's path may hold a token
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    store = Store.open(settings.db_url)
    try:
        client = await connect(settings)
        lacking = await search_attributes.missing(client, settings.temporal_namespace)
        if lacking:  # a campaign would get stuck at the first upsert of one of them
            raise RuntimeError(
                f"namespace {settings.temporal_namespace!r} lacks the search attribute(s) {', '.join(lacking)}: "
                "register them first (`dunning dev` and the compose stack do; see docs/production-temporal.md)"
            )
        stop = stop or asyncio.Event()
        with stop_on_signals(stop, "worker", settings.shutdown_grace_seconds):
            await serve_worker(client, settings, store, stop)
    finally:
        store.dispose()
