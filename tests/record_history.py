"""Record the histories in tests/histories/ (run when a deliberate, patched change needs a
new one): `python -m tests.record_history v2` writes v2_*.json. Older versions' files stay:
they prove campaigns started by that code still replay. Each is a full campaign on the time-skipping
server, written as the JSON the Temporal UI and CLI export."""

import asyncio
import json
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dunning.config import load_settings
from dunning.email.outbox import OutboxSink
from dunning.store.store import Store
from worker import search_attributes
from worker.binaries import find_binary

HISTORIES = Path(__file__).parent / "histories"


async def record(tag: str) -> None:
    from tests.temporal_fixtures import running_worker

    with tempfile.TemporaryDirectory() as tmp, OutboxSink(Path(tmp) / "outbox", port=0) as sink:
        settings = load_settings(home=Path(tmp), smtp_port=sink.port, temporal_task_queue="record")
        store = Store.open(settings.db_url)
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=find_binary("temporal-test-server"), data_converter=pydantic_data_converter
        )
        await search_attributes.register(env.client, "default")
        async with running_worker(env, settings, store) as dunning:
            anchor = await env.get_current_time()
            full = await dunning.start_campaign("sub_hist_full", "cus_h", "h@example.com", anchor)
            await full.result()
            rec = await dunning.start_campaign("sub_hist_recovered", "cus_h", "h@example.com", anchor)
            await env.sleep(timedelta(days=6))
            await dunning.payment_recovered("sub_hist_recovered", "paid")
            await rec.result()
            for name, handle in [("full_campaign", full), ("recovered_day_6", rec)]:
                history = await handle.fetch_history()
                (HISTORIES / f"{tag}_{name}.json").write_text(json.dumps(history.to_json_dict(), indent=1))
        await env.shutdown()
        store.dispose()


if __name__ == "__main__":
    import sys

    asyncio.run(record(sys.argv[1]))
