"""Serve the API with uvicorn inside a running asyncio loop (`dunning api`, `dunning dev`).

Uvicorn installs no signal handlers here: the caller owns SIGTERM/SIGINT (`run_api` for
`dunning api`; in `dunning dev` the loop also runs the worker and the dev server). Setting
`stop` (or cancelling the task that awaits `serve_api`) shuts the server down gracefully:
it stops accepting connections, requests in flight get `shutdown_grace_seconds` to finish
(then they are cancelled), and the lifespan's sweep stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from dunning.config import Settings
from dunning.store.store import Store
from starter.api import create_app
from starter.client import DunningClient
from worker.shutdown import stop_on_signals

log = logging.getLogger("dunning.api")


class _Server(uvicorn.Server):
    """uvicorn.Server that leaves process signals alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


async def serve_api(
    settings: Settings,
    store: Store,
    client_factory: Callable[[], Awaitable[DunningClient]],
    host: str,
    port: int,
    *,
    log_level: str = "info",
    stop: asyncio.Event | None = None,
    **app_options: Any,
) -> None:
    """Run until `stop` is set or the task is cancelled (or until uvicorn fails to bind,
    which raises SystemExit(1) from uvicorn; it is turned into OSError naming the address)."""
    app = create_app(settings, store, client_factory, **app_options)
    grace = settings.shutdown_grace_seconds
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False,
        timeout_graceful_shutdown=math.ceil(grace),
    )  # fmt: skip
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name=f"dunning-api-{host}:{port}")
    stopping = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("API stopping: no new connections; requests in flight get up to %g s", grace)
            server.should_exit = True
            await asyncio.shield(task)
            log.info("API stopped")
        task.result()
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        raise
    except SystemExit as err:
        raise OSError(f"the API could not listen on {host}:{port} (see the log above)") from err
    finally:
        stopping.cancel()
    if not server.started:
        raise OSError(f"the API could not listen on {host}:{port} (see the log above)")


async def run_api(
    settings: Settings, store: Store, client_factory: Callable[[], Awaitable[DunningClient]], **options: Any
) -> None:
    """`dunning api`: serve on DUNNING_API_HOST:DUNNING_API_PORT until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    with stop_on_signals(stop, "API", settings.shutdown_grace_seconds):
        await serve_api(settings, store, client_factory, settings.api_host, settings.api_port, stop=stop, **options)
