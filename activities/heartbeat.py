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
    carries what it returns (an activity's progress, for a retried attempt to resume).
    The first beat is after `every` seconds, not at once: an effect that is done within a
    second (most are) sends none, and costs no heartbeat round trip to the server (nor a
    billed action on Temporal Cloud). A dead worker is still noticed within the heartbeat
    timeout (5 s), which counts from the attempt's start."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            activity.heartbeat(*(() if details is None else (details(),)))

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
