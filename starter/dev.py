"""`dunning dev`: the whole engine on one machine.

Starts the bundled Temporal dev server (state under DUNNING_HOME, UI on :8233, search
attributes registered), an SMTP sink that writes every message to DUNNING_HOME/outbox,
the worker, the drift-sweep Schedule (starter.schedules) and the HTTP API. Ctrl-C (or
SIGTERM) stops everything, in order (`run_dev`).

Before anything starts, every port it needs (Temporal gRPC, UI, API, SMTP sink) must be
free: a taken one is an error naming it (`PortTaken`), never a server it attaches to.
The Temporal dev server is a child process that dies with `dunning dev`, also when that
is SIGKILLed: on Linux it is started with prctl(PR_SET_PDEATHSIG, SIGTERM)
(`die_with_parent`), so the kernel signals it when its parent goes; a normal exit stops
it in order (`stop_process`). Elsewhere only the normal exit stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
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


class PortTaken(RuntimeError):
    """A port `dunning dev` needs is in use (nothing was started)."""


def dev_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """(what, host, port) of every port `dunning dev` listens on, with the setting that moves it."""
    host, _, port = settings.temporal_address.rpartition(":")
    return [
        ("Temporal gRPC (DUNNING_TEMPORAL_ADDRESS)", host or "127.0.0.1", int(port)),
        ("Temporal UI (DUNNING_UI_PORT)", host or "127.0.0.1", settings.ui_port),
        ("API (DUNNING_API_PORT)", settings.api_host, settings.api_port),
        ("SMTP sink (DUNNING_SMTP_PORT)", settings.smtp_host, settings.smtp_port),
    ]


def port_problems(ports: list[tuple[str, str, int]]) -> list[str]:
    """Why each port cannot be listened on: one asked for twice, or in use (a bind that
    fails; SO_REUSEADDR so a closed socket in TIME_WAIT does not count)."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for what, host, port in ports:
        if port in seen:
            problems.append(f"port {port} is set for both {seen[port]} and {what}")
            continue
        seen[port] = what
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as err:
            problems.append(f"{what}: cannot resolve {host!r}: {err}")
            continue
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                why = "is already in use" if err.errno == errno.EADDRINUSE else f"cannot be bound ({err.strerror})"
                problems.append(f"port {port} on {host} for {what} {why}")
    return problems


def check_ports(settings: Settings) -> None:
    """Raise PortTaken naming every port `dunning dev` cannot listen on."""
    problems = port_problems(dev_ports(settings))
    if problems:
        raise PortTaken(
            "; ".join(problems) + ". Nothing was started: stop what listens there (another `dunning dev`?) "
            "or set the variable named to a free port."
        )


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when its parent dies (Linux only;
    None elsewhere). libc's prctl is looked up here, in the parent, so the forked child
    only calls it; if the parent died before the call, the child exits at once.
    Note the kernel's rule: the signal is sent when the parent *thread* that forked the
    child ends, so start the child from a thread that lives as long as the process
    (run_dev does it from the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def die_with_parent() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl ran
            os._exit(1)

    return die_with_parent


def start_temporal(settings: Settings, ui_port: int | None = None, headless: bool = False) -> subprocess.Popen:
    """The Temporal dev server as a child that dies with this process (see the module doc)."""
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
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_pdeathsig()
        )


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
    check_ports(settings)  # before anything starts
    settings.home.mkdir(parents=True, exist_ok=True)
    settings = dev_defaults(settings)
    store = Store.open(settings.db_url)
    sink = OutboxSink(settings.outbox, host=settings.smtp_host, port=settings.smtp_port)
    proc = start_temporal(settings)
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
