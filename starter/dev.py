"""`dunning dev`: the whole engine on one machine.

Starts the bundled Temporal dev server (state under DUNNING_HOME, UI on :8233, search
attributes registered), an SMTP sink that writes every message to DUNNING_HOME/outbox,
the worker, the drift-sweep Schedule (starter.schedules) and the HTTP API. Ctrl-C (or
SIGTERM) stops everything, in order (`run_dev`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
from collections.abc import Awaitable, Callable

from temporalio.client import Client

from dunning.config import Settings
from dunning.email.outbox import OutboxSink
from dunning.store.store import Store
from worker import search_attributes
from worker.app import connect, serve_worker
from worker.binaries import find_binary
from worker.shutdown import stop_on_signals


def with_dev_secrets(settings: Settings) -> Settings:
    """CLI commands beside a running `dunning dev` use the secrets it generated."""
    secret_file = settings.home / "dev-secrets"
    if not secret_file.is_file() or (settings.fake_webhook_secret and settings.api_token):
        return settings
    return dev_defaults(settings)


def dev_defaults(settings: Settings) -> Settings:
    """Fill the dev-only secrets the user did not set (printed at start)."""
    secret_file = settings.home / "dev-secrets"
    if secret_file.is_file():
        fake, token = secret_file.read_text().split()[:2]
    else:
        fake, token = f"whsec_dev_{secrets.token_hex(8)}", f"dev_{secrets.token_hex(12)}"
        secret_file.write_text(f"{fake}\n{token}\n")
    return settings.model_copy(
        update={
            "fake_webhook_secret": settings.fake_webhook_secret or fake,
            "api_token": settings.api_token or token,
        }
    )


def start_temporal(settings: Settings, ui_port: int | None = None, headless: bool = False) -> subprocess.Popen:
    host, _, port = settings.temporal_address.rpartition(":")
    cmd = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--ip",
        host or "127.0.0.1",
        "--port",
        port,
        "--ui-port",
        str(ui_port or settings.ui_port),
        "--db-filename",
        str((settings.home / "temporal.db").resolve()),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "error",
    ]
    if headless:
        cmd.append("--headless")
    for name, type_ in search_attributes.SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={type_}"]
    with open(settings.home / "temporal.log", "ab") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def wait_for_temporal(settings: Settings, proc: subprocess.Popen | None = None, timeout: float = 60) -> Client:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await connect(settings)
        except Exception:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited with {proc.returncode}; see {settings.home / 'temporal.log'}"
                ) from None
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"Temporal at {settings.temporal_address} not reachable after {timeout:.0f}s") from None
            await asyncio.sleep(0.25)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


ApiRunner = Callable[[Settings, Store, Callable[[], Awaitable], asyncio.Event], Awaitable[None]]


async def run_dev(settings: Settings, api: ApiRunner | None = None, say: Callable[[str], None] = print) -> None:
    """Run everything until SIGTERM/SIGINT, then stop the parts in order: the API (no new
    events come in), the worker (activities in flight finish or are handed back, the
    outbox deliverer stops), the SMTP sink, the Temporal dev server; each part within
    `shutdown_grace_seconds`."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings = dev_defaults(settings)
    store = Store.open(settings.db_url)
    proc = start_temporal(settings)
    sink = OutboxSink(settings.outbox, host=settings.smtp_host, port=settings.smtp_port)
    grace = settings.shutdown_grace_seconds
    stop = asyncio.Event()
    with stop_on_signals(stop, "dunning dev", grace, force=proc.kill):
        try:
            client = await _unless_stopped(wait_for_temporal(settings, proc), stop)
            if client is not None:
                await search_attributes.register(client, settings.temporal_namespace)
                sink.start()
                _banner(settings, sink, api is not None, say)
                await _serve(settings, store, client, api, stop, say)
        finally:
            if sink.running:
                say("stopping SMTP sink")
                sink.stop()
            if proc.poll() is None:
                say("stopping Temporal dev server")
            stop_process(proc)
            store.dispose()
    say("stopped")


def _banner(settings: Settings, sink: OutboxSink, api: bool, say: Callable[[str], None]) -> None:
    say(f"Temporal UI      http://127.0.0.1:{settings.ui_port}")
    say(f"Temporal gRPC    {settings.temporal_address} (namespace {settings.temporal_namespace})")
    say(f"Outbox (SMTP)    {settings.smtp_host}:{sink.port} -> {settings.outbox.resolve()}")
    say(f"Database         {settings.db_url}")
    if settings.outbound_urls:
        say(f"Outbound events  {len(settings.outbound_urls)} URL(s), Standard Webhooks signed")
    if api:
        say(f"API              http://{settings.api_host}:{settings.api_port}")
        say(f"  DUNNING_FAKE_WEBHOOK_SECRET={settings.fake_webhook_secret}")
        say(f"  DUNNING_API_TOKEN={settings.api_token}")
    say(f"A 'day' is {settings.day_seconds:g} s (DUNNING_DAY_SECONDS). Ctrl-C stops everything.")


async def _unless_stopped(step: Awaitable[Client], stop: asyncio.Event) -> Client | None:
    """`step`'s result, or None when a stop signal comes first (then it is cancelled)."""
    task = asyncio.ensure_future(step)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _serve(
    settings: Settings, store: Store, client: Client, api: ApiRunner | None, stop: asyncio.Event,
    say: Callable[[str], None],
) -> None:  # fmt: skip
    worker_stop, api_stop = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(serve_worker(client, settings, store, worker_stop), name="dunning-dev-worker")
    await _sweep_schedule(client, settings, say)
    parts = [worker]
    if api is not None:

        async def client_factory():
            from starter.client import DunningClient

            return DunningClient(client, store, settings)

        parts.append(asyncio.ensure_future(api(settings, store, client_factory, api_stop)))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *parts], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if stop.is_set():
        say(f"stopping (each part within {settings.shutdown_grace_seconds:g} s)")
    failure: BaseException | None = None
    for name, part, part_stop in [("API", parts[-1], api_stop), ("worker", worker, worker_stop)]:
        if name == "API" and api is None:
            continue
        say(f"stopping {name}")
        part_stop.set()
        try:
            await part
        except Exception as err:  # the first failure is raised once everything stopped
            failure = failure or err
    if failure is not None:
        raise failure


async def _sweep_schedule(client: Client, settings: Settings, say: Callable[[str], None]) -> None:
    """Create or update the drift-sweep Schedule (the worker just started runs it)."""
    from starter.schedules import SCHEDULE_ID, apply_schedules

    try:
        done = await apply_schedules(client, settings)
    except Exception as err:  # the engine runs without the sweep; `dunning schedules apply` retries
        say(f"Drift sweep      schedule {SCHEDULE_ID} NOT applied ({type(err).__name__}): run `dunning schedules apply`")
        return
    say(f"Drift sweep      schedule {SCHEDULE_ID} {done}: every {settings.recompute.sweep_interval_seconds:g} s")
