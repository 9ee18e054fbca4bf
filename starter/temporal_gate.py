"""The API's lazy door to Temporal: connect on first need, keep the connected client.

The API process starts, answers /healthz and answers 503 while Temporal is down; the
first request after Temporal is back connects. What counts as "Temporal is unreachable"
is decided here, once, for every caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from temporalio.service import RPCError, RPCStatusCode

if TYPE_CHECKING:
    from starter.client import DunningClient

_UNAVAILABLE_CODES = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})


class TemporalUnavailable(Exception):
    """Temporal could not be reached (connection refused, timed out, unavailable)."""


def is_unavailable(err: BaseException) -> bool:
    """True for errors that mean "Temporal is not reachable now; try again later"."""
    if isinstance(err, TemporalUnavailable):
        return True
    if isinstance(err, RPCError):
        return err.status in _UNAVAILABLE_CODES
    if isinstance(err, (TimeoutError, ConnectionError, OSError)):
        return True
    # temporalio raises RuntimeError("Failed client connect: ...") when the lazy
    # connection underneath a call cannot be made.
    return isinstance(err, RuntimeError) and "client connect" in str(err).lower()


def describe_unavailable(err: BaseException) -> str:
    if isinstance(err, TemporalUnavailable):
        return str(err)
    if isinstance(err, TimeoutError):
        return "Temporal did not answer in time"
    return f"Temporal is unreachable ({type(err).__name__}: {str(err)[:200]})"


class TemporalGate:
    """Awaits `client_factory` once it succeeds and caches the client; a failure is not
    cached (the next call tries again) and is raised as TemporalUnavailable."""

    def __init__(self, client_factory: Callable[[], Awaitable[DunningClient]], timeout: float = 5.0) -> None:
        self._factory = client_factory
        self._timeout = timeout
        self._client: DunningClient | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def get(self) -> DunningClient:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(self._factory(), self._timeout)
                except Exception as err:  # whatever the factory raised, Temporal is not usable
                    raise TemporalUnavailable(describe_unavailable(err)) from err
        return self._client
