"""`python -m worker`: run the campaign worker with settings from DUNNING_* / dunning.toml."""

import asyncio
import logging
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
    except KeyboardInterrupt:
        pass
