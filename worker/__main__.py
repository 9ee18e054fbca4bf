"""`python -m worker`: run the campaign worker with settings from DUNNING_* / dunning.toml.
SIGTERM/SIGINT stop it gracefully (worker/app.py), then it exits 0."""

import asyncio
import contextlib
import logging
import os
import sys

from dunning.config import ConfigError, load_settings
from worker.app import run_worker

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as err:
        sys.exit(str(err))
    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:  # Ctrl-C before the worker installed its handlers
        pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(0)  # not a normal interpreter exit: the SDK's threads could abort it (temporalio/sdk-python#300)
