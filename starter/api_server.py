"""Serve the API with uvicorn inside a running asyncio loop (`dunning api`, `dunning dev`).

Uvicorn installs no signal handlers here: the caller owns Ctrl-C (in `dunning dev` the
loop also runs the worker and the dev server). Cancelling the task that awaits
`serve_api` shuts the server down gracefully (open requests finish, the lifespan's sweep
stops) before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from dunning.config import Settings
from dunning.store.store import Store
from starter.api import create_app
from starter.client import DunningClient


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
    **app_options: Any,
) -> None:
    """Run until cancelled (or until uvicorn fails to bind, which raises SystemExit(1)
    from uvicorn; it is turned into OSError naming the address)."""
    app = create_app(settings, store, client_factory, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name=f"dunning-api-{host}:{port}")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        raise
    except SystemExit as err:
        raise OSError(f"the API could not listen on {host}:{port} (see the log above)") from err
    if not server.started:
        raise OSError(f"the API could not listen on {host}:{port} (see the log above)")
