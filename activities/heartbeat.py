"""Heartbeats while an activity waits on the network or a thread, so a dead worker is
noticed within the heartbeat timeout (seconds), not the start-to-close timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from temporalio import activity

EVERY = 1.0


@contextlib.asynccontextmanager
async def heartbeating(every: float = EVERY, details: Callable[[], Any] | None = None) -> AsyncIterator[None]:
    """Heartbeat every `every` seconds while the block runs; with `details`, each beat
    carries what it returns (an activity's progress, for a retried attempt to resume)."""

    async def beat() -> None:
        while True:
            activity.heartbeat(*(() if details is None else (details(),)))
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
