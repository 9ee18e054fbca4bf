"""SIGTERM / SIGINT for the long-running commands (`dunning worker`, `api`, `dev`).

The first signal sets a stop event: the process stops taking new work and finishes (or
hands back) what is in flight within `shutdown_grace_seconds`, then exits 0. A second
signal exits at once (status 130), for an operator who will not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger("dunning.shutdown")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event, what: str, grace: float, force: Callable[[], None] | None = None
) -> Iterator[asyncio.Event]:
    """While inside, SIGTERM/SIGINT set `stop` (the loop's handlers; restored on exit); a
    second one calls `force` (e.g. kill a child process) and exits 130."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: %s exits now, without waiting for in-flight work", sig.name, what)
            if force is not None:
                force()
            logging.shutdown()
            sys.stderr.flush()
            os._exit(130)
        log.info("%s received: %s stopping gracefully (up to %g s)", sig.name, what, grace)
        stop.set()

    installed = []
    for sig in SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, handle, sig)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
