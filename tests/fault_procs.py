"""Processes and bookkeeping for the fault-injection suite (tests/test_faults_*.py).

`TemporalServer`: a real `temporal server start-dev` on a fixed port with a persistent
--db-filename, so it can be stopped and started again with its state. `Rig`: one world per
test — its own SQLite database, task queue, campaign config (a TOML file the workers read
through DUNNING_CONFIG), a `FaultSink`, and `dunning worker` subprocesses. The process
helpers (Spawner, clean_env, waits) are the ones tests/test_devserver.py uses.
Over 300 lines on purpose: the rig and the delivery assertions read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle

from dunning.config import Settings, load_settings
from dunning.contracts import CampaignPlan
from dunning.store.schema import step_deliveries
from dunning.store.store import LedgerEvent, Store
from starter.client import DunningClient
from starter.dev import start_temporal, stop_process, wait_for_temporal
from tests.fault_smtp import FaultSink
from tests.test_devserver import Spawner, asleep, clean_env, free_port, kill_group, spawn, tail
from worker import search_attributes

__all__ = ["asleep", "spawn", "temporal_server", "rigs"]  # fixtures for the test modules


# --- waits --------------------------------------------------------------------------------
async def until(check: Callable[[], Any], timeout: float, what: Callable[[], str], every: float = 0.2) -> Any:
    """Poll `check` (sync or async) until truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g}s waiting for: {what()}", pytrace=False)
        await asyncio.sleep(every)


async def exited(proc: subprocess.Popen, timeout: float) -> int | None:
    """The exit code once `proc` exits, or None if it still runs after `timeout` s."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return proc.returncode


# --- a restartable dev server ---------------------------------------------------------------
@dataclass
class TemporalServer:
    home: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    client: Client | None = None
    restarts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        return load_settings(home=self.home, temporal_address=self.address)

    async def start(self) -> Client:
        """Start on `port` (picked free the first time; a taken pick is retried elsewhere)."""
        self.home.mkdir(parents=True, exist_ok=True)
        errors = []
        fixed = bool(self.port)
        for _ in range(1 if fixed else 3):
            self.port = self.port if fixed else free_port()
            self.proc = start_temporal(self.settings, ui_port=free_port(), headless=True)
            try:
                self.client = await wait_for_temporal(self.settings, self.proc, timeout=60)
                await search_attributes.register(self.client, self.settings.temporal_namespace)
                return self.client
            except RuntimeError as err:
                kill_group(self.proc)
                errors.append(str(err))
        pytest.fail(
            "temporal dev server did not start:\n" + "\n".join(errors) + "\n" + tail(self.home / "temporal.log")
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM, then SIGKILL after 10 s
            kill_group(self.proc)
        self.proc = None

    async def restart(self, down_for: float = 0.0) -> Client:
        """Stop, stay down `down_for` seconds, start again on the same port and database."""
        self.stop()
        await asyncio.sleep(down_for)
        self.restarts += 1
        return await self.start()


@pytest_asyncio.fixture(scope="module")
async def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TemporalServer]:
    server = TemporalServer(tmp_path_factory.mktemp("temporal"))
    await server.start()
    try:
        yield server
    finally:
        server.stop()


# --- one test's world ---------------------------------------------------------------------
@dataclass
class Rig:
    name: str
    home: Path
    spawn: Spawner
    server: TemporalServer
    sink: FaultSink
    store: Store
    config: str  # the TOML the workers read (campaign ladder etc.)
    worker_env: dict[str, Any]
    task_queue: str
    workers: list[subprocess.Popen] = field(default_factory=list)
    _client: DunningClient | None = None

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.home / 'dunning.db'}"

    @property
    def settings(self) -> Settings:
        """The test process's settings (clients): same database, server and queue."""
        return load_settings(
            home=self.home, database_url=self.db_url, temporal_address=self.server.address,
            temporal_task_queue=self.task_queue, **tomllib.loads(self.config),
        )  # fmt: skip

    def plan(self, provider: str = "fake") -> CampaignPlan:
        return self.settings.plan(provider)

    def start_worker(self, **extra: Any) -> subprocess.Popen:
        env = clean_env(
            home=self.home, database_url=self.db_url, temporal_address=self.server.address,
            temporal_task_queue=self.task_queue, smtp_port=self.sink.port, config=self.home / "dunning.toml",
            **{**self.worker_env, **extra},
        )  # fmt: skip
        proc = self.spawn(f"{self.name}-worker", [sys.executable, "-m", "worker"], env)
        self.workers.append(proc)
        return proc

    async def worker(self, timeout: float = 30, **extra: Any) -> subprocess.Popen:
        """Start a worker and wait until it polls the task queue (so a campaign started
        next runs on time, not a worker boot later)."""
        proc = self.start_worker(**extra)
        assert self.server.client is not None
        request = DescribeTaskQueueRequest(
            namespace=self.settings.temporal_namespace,
            task_queue=TaskQueue(name=self.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )

        async def polling() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"worker exited {proc.returncode} at start\n{tail(self.spawn.log(proc))}", pytrace=False)
            pollers = (await self.server.client.workflow_service.describe_task_queue(request)).pollers  # type: ignore[union-attr]
            return any(p.identity.startswith(f"{proc.pid}@") for p in pollers)

        await until(
            polling, timeout, lambda: f"worker {proc.pid} polling {self.task_queue}\n{tail(self.spawn.log(proc))}"
        )
        return proc

    def sigkill(self, proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    async def client(self) -> DunningClient:
        if self._client is None:
            self._client = await DunningClient.connect(self.settings, self.store)
        return self._client

    async def start_campaign(self, tag: str = "", **details: Any) -> tuple[str, WorkflowHandle]:
        sub = f"sub_{self.name}{tag}_{uuid.uuid4().hex[:6]}"
        client = await self.client()
        handle = await client.start_campaign(sub, f"cus_{sub}", f"{sub}@example.com", **details)
        return sub, handle

    async def result(self, handle: WorkflowHandle, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(handle.result(), timeout=timeout)
        except TimeoutError:
            pytest.fail(f"campaign {handle.id} not finished after {timeout:g}s\n{self.diagnostics()}", pytrace=False)

    async def sent_then_recover(self, sub: str, handle: WorkflowHandle, steps: list[str], timeout: float) -> Any:
        """Wait until every step in `steps` is recorded sent (fail at once if one is recorded
        skipped or failed), then end the campaign by a payment; its final state."""

        def sent() -> bool:
            given_up = [e for e in self.ledger(sub) if e.step_key in steps and e.type != "dunning.step_sent"]
            if given_up:
                pytest.fail(f"a step was given up: {given_up}\n{self.diagnostics(sub)}", pytrace=False)
            rows = self.deliveries(sub)
            return all(k in rows and rows[k].state == "sent" for k in steps)

        await until(sent, timeout, lambda: f"steps {steps} of {sub} sent\n{self.diagnostics(sub)}")
        answer = await (await self.client()).payment_recovered(sub)
        assert answer.status == "recovered", answer
        return await self.result(handle, 30)

    # --- what the store says ----------------------------------------------------------------
    def ledger(self, sub: str) -> list[LedgerEvent]:
        return self.store.events(sub)

    def deliveries(self, sub: str) -> dict[str, Any]:
        """step_key -> the step_deliveries row (state, sends, message_id, claimed_by)."""
        d = step_deliveries.c
        query = select(d.step_key, d.state, d.sends, d.message_id, d.claimed_by).where(d.subscription_id == sub)
        with self.store.engine.connect() as conn:
            return {row.step_key: row for row in conn.execute(query).all()}

    def diagnostics(self, sub: str | None = None) -> str:
        parts = [f"rig {self.name!r}: sink {self.sink.summary(sub)}"]
        if sub is not None:
            rows = [(e.type, e.step_key, e.data, f"+{(e.occurred_at - e.campaign_started_at).total_seconds():.2f}s")
                    for e in self.ledger(sub)]  # fmt: skip
            parts.append(f"ledger {rows}")
            parts.append("deliveries " + str({k: (r.state, r.sends) for k, r in self.deliveries(sub).items()}))
        parts += [tail(self.spawn.log(w), 20) for w in self.workers]
        return "\n".join(parts)


async def stages(handle: WorkflowHandle) -> list[str]:
    """Every DunningStage value the campaign upserted, in order."""
    from temporalio.converter import PayloadConverter

    values = []
    for event in (await handle.fetch_history()).events:
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if "DunningStage" in fields:
                value = PayloadConverter.default.from_payloads([fields["DunningStage"]])[0]
                values.append(value[0] if isinstance(value, list) else value)
    return values


@pytest.fixture
def rigs(temporal_server: TemporalServer, tmp_path: Path, spawn: Spawner) -> Iterator[Callable[..., Rig]]:
    """`rigs(name, config, **worker_env)`: a Rig on the module's dev server."""
    with contextlib.ExitStack() as stack:

        def make(name: str, config: str, server: TemporalServer | None = None, **worker_env: Any) -> Rig:
            home = tmp_path / name
            home.mkdir(parents=True)
            (home / "dunning.toml").write_text(config)
            sink = stack.enter_context(FaultSink())
            store = stack.enter_context(Store.open(f"sqlite:///{home / 'dunning.db'}"))
            return Rig(
                name, home, spawn, server or temporal_server, sink, store, config, worker_env,
                task_queue=f"tq-{name}-{uuid.uuid4().hex[:8]}",
            )  # fmt: skip

        yield make


# --- the delivery semantics, asserted -------------------------------------------------------
def assert_each_step_delivered(rig: Rig, sub: str, steps: list[str], max_copies: int = 1) -> dict[str, list[str]]:
    """0 lost and one Message-ID per step: every step stored at the sink at least once and
    at most `max_copies` times, all copies with one Message-ID, which is the Message-ID of
    its single `dunning.step_sent` ledger row; its delivery row is 'sent' and counts at
    least as many SMTP sends as copies arrived. Returns step -> copies."""
    where = rig.diagnostics(sub)
    got = {key: rig.sink.copies(sub, key) for key in steps}
    lost = [key for key, ids in got.items() if not ids]
    assert not lost, f"LOST (never stored at the SMTP sink): {lost}\n{where}"
    for key, ids in got.items():
        assert len(set(ids)) == 1, (
            f"{key}: {len(set(ids))} distinct Message-IDs among {len(ids)} copies: {ids}\n{where}"
        )
        assert len(ids) <= max_copies, f"{key}: {len(ids)} copies (at most {max_copies} expected)\n{where}"
    sent_rows = {e.step_key: e for e in rig.ledger(sub) if e.type == "dunning.step_sent"}
    rows = rig.deliveries(sub)
    for key, ids in got.items():
        assert key in sent_rows, f"{key}: delivered but no dunning.step_sent ledger row\n{where}"
        assert sent_rows[key].data.get("message_id") == ids[0], f"{key}: ledger Message-ID differs\n{where}"
        assert rows[key].state == "sent", f"{key}: delivery row {rows[key].state!r}, not 'sent'\n{where}"
        assert rows[key].sends >= len(ids), (
            f"{key}: step_deliveries.sends = {rows[key].sends} but {len(ids)} copies arrived (every send is counted)\n{where}"
        )
    return got
