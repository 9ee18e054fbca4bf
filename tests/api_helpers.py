"""Helpers and fixtures for the HTTP API tests: the app in process over httpx's ASGI
transport, with provider secrets and an API token configured."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import func, select
from temporalio.service import RPCError, RPCStatusCode

from dunning.config import Settings
from dunning.store.schema import customers, inbox, subscriptions
from dunning.store.store import Store
from starter.api import create_app
from starter.client import DunningClient, UnknownSubscription
from tests.webhook_payloads import API_TOKEN, BT, FAKE_SECRET, STRIPE_SECRET, Request
from workflows.campaign import workflow_id


def api_settings(settings: Settings, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "stripe_webhook_secret": [STRIPE_SECRET],
        "fake_webhook_secret": FAKE_SECRET,
        "braintree_merchant_id": BT["merchant_id"],
        "braintree_public_key": BT["public_key"],
        "braintree_private_key": BT["private_key"],
        "api_token": API_TOKEN,
    }
    return settings.model_copy(update={**values, **over})


@asynccontextmanager
async def api_client(
    settings: Settings, store: Store, client_factory: Callable[[], Awaitable[DunningClient]], **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, store, client_factory, sweep_interval=0, **options)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dunning.test") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


@pytest_asyncio.fixture
async def api(settings: Settings, store: Store, dunning: DunningClient) -> AsyncIterator[httpx.AsyncClient]:
    """The API wired to the time-skipping server, with a worker running."""

    async def factory() -> DunningClient:
        return dunning

    # event times are bounded against the time-skipping server's clock (it runs days ahead)
    async with api_client(api_settings(settings), store, factory, clock=dunning.now) as client:
        yield client


async def post(client: httpx.AsyncClient, request: Request) -> httpx.Response:
    path, body, headers = request
    return await client.post(path, content=body, headers=headers)


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check` (real time) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {check}")
        await asyncio.sleep(0.05)


async def workflow_exists(client: DunningClient, sub: str) -> bool:
    try:
        await client.client.get_workflow_handle(workflow_id(sub)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def uid(prefix: str) -> str:
    """A unique id: every test shares one Temporal server (and runs on two databases)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def subs(dunning: DunningClient) -> AsyncIterator[Callable[[str], str]]:
    """Unique subscription ids (every test shares one Temporal server and runs on two
    databases). A campaign still running at the end is ended by a recovery signal and
    awaited while the worker still runs, so no task is left half-done on the shared
    time-skipping server (that would hold its clock); terminated as a last resort."""
    made: list[str] = []

    def new(prefix: str) -> str:
        made.append(uid(prefix))
        return made[-1]

    yield new
    for sub in made:
        handle = dunning.client.get_workflow_handle(workflow_id(sub))
        try:
            if await dunning.payment_recovered(sub, "manual_adjustment"):
                await asyncio.wait_for(handle.result(), 10)
        except UnknownSubscription:
            pass
        except Exception:
            with contextlib.suppress(RPCError):
                await handle.terminate("test ended")


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def nothing_written(store: Store) -> bool:
    return count(store, inbox) == 0 and count(store, subscriptions) == 0 and count(store, customers) == 0


class RecordingClient:
    """Stands in for DunningClient where Temporal must never be reached: records every
    call, and the test asserts the record is empty."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        raise AssertionError(f"Temporal was called: {name}{args}")

    async def attach(self, event: Any, anchor: Any) -> None:
        self._record("attach", event.subscription_id, anchor)

    async def signal_event(self, event: Any) -> bool:
        self._record("signal_event", event.subscription_id)
        return False

    async def recover(self, sub: str, event_id: str, reason: str) -> str:
        self._record("recover", sub)
        return ""

    async def recover_after_cancel(self, sub: str, *args: Any) -> str:
        self._record("recover_after_cancel", sub)
        return ""

    async def payment_recovered(self, sub: str, reason: str = "", key: str | None = None) -> Any:
        self._record("payment_recovered", sub)

    async def resolve(self, sub: str, reason: str, kind: str = "") -> bool:
        self._record("resolve", sub)
        return False

    async def status(self, sub: str) -> Any:
        self._record("status", sub)
