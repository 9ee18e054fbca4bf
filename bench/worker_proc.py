"""`python -m bench.worker_proc engine|baseline SETTINGS_JSON [MAX_CACHED]`: one worker in its
own process for a benchmark. Prints `ready` once it polls; stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from temporalio.client import Client
from temporalio.worker import Worker

from bench.baseline import BareCampaign, bare_effect
from bench.harness import settings_from


async def main(kind: str, overrides: dict, max_cached: int | None) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    settings = settings_from(overrides)
    cached = max_cached if max_cached is not None else int(getattr(settings, "worker_max_cached_workflows", 1000))
    if kind == "engine":
        from dunning.store.store import Store
        from worker import app

        if hasattr(app, "size_db_threads"):  # (an engine from before the worker was sized in config)
            settings = settings.model_copy(update={"worker_max_cached_workflows": cached})
            app.size_db_threads(settings)
        store = Store.open(settings.db_url)
        worker = app.build_worker(await app.connect(settings), settings, store)
    else:
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        worker = Worker(
            client, task_queue=settings.temporal_task_queue, workflows=[BareCampaign], activities=[bare_effect],
            max_cached_workflows=cached,
            max_concurrent_activities=getattr(settings, "worker_max_concurrent_activities", 64),
        )  # fmt: skip
    async with worker:
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None))
