"""Record the histories in tests/histories/ (run when a deliberate change needs a new
one): `python -m tests.record_history v3` writes v3_*.json. Keep older versions' files
while a campaign started by that code can still be running: they prove it still replays.
Each is a campaign on the time-skipping server, written as the JSON the Temporal UI and
CLI export, together covering signals, Updates, consequences and a superseded effect.
v4: the outbox and ledger-skip patches; v5: the end upserted as DunningOutcome; v6: shape 2
(store-only steps as local activities, one upsert at the end, no patch markers)."""

import asyncio
import json
import tempfile
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dunning.config import load_settings
from dunning.contracts import BillingEvent, EventKind
from dunning.email.outbox import OutboxSink
from dunning.projection import decide
from dunning.providers import fake_state
from dunning.store.store import Store
from worker import search_attributes
from worker.binaries import find_binary

HISTORIES = Path(__file__).parent / "histories"
DAY = timedelta(days=1)


def event(sub: str, kind: EventKind, at, n: str = "") -> BillingEvent:
    return BillingEvent(
        provider="fake", event_id=f"evt_{sub}_{kind.value}{n}", event_type=f"fake.{kind.value}", kind=kind,
        occurred_at=at, subscription_id=sub, customer_id="cus_h",
    )  # fmt: skip


async def record(tag: str) -> None:
    from tests.temporal_fixtures import running_worker

    with tempfile.TemporaryDirectory() as tmp, OutboxSink(Path(tmp) / "outbox", port=0) as sink:
        settings = load_settings(
            home=Path(tmp), smtp_port=sink.port, temporal_task_queue="record",
            outbound_urls=["http://127.0.0.1:9/hooks"], outbound_secret="record",  # events enter the outbox
        )  # fmt: skip
        store = Store.open(settings.db_url)
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=find_binary("temporal-test-server"), data_converter=pydantic_data_converter
        )
        await search_attributes.register(env.client, "default")
        async with running_worker(env, settings, store) as dunning:
            anchor = await env.get_current_time()
            for sub in ("sub_hist_full", "sub_hist_recover", "sub_hist_superseded", "sub_hist_signals"):
                fake_state.set_card(store.engine, sub, "decline:insufficient_funds")
            # retries, the whole ladder, the terminal cancel, exhausted; then a late payment
            full = await dunning.start_campaign("sub_hist_full", "cus_h", "h@example.com", anchor, decline_class="soft")
            await full.result()
            full = dunning.client.get_workflow_handle(full.id, run_id=(await full.describe()).run_id)
            await dunning.payment_recovered("sub_hist_full", "paid_out_of_band")  # after_cancel run
            # the recover Update on day 8, after a consequence change
            t = await env.get_current_time()
            rec = await dunning.start_campaign("sub_hist_recover", "cus_h", "h@example.com", t, decline_class="soft")
            await env.sleep(8 * DAY)
            await dunning.payment_recovered("sub_hist_recover", "paid_out_of_band")
            await rec.result()
            # a payment the projection saw but no message carried: the next effect is superseded
            t0 = await env.get_current_time()
            sup = await dunning.start_campaign("sub_hist_superseded", "cus_h", "h@example.com", t0, decline_class="soft")
            await env.sleep(DAY / 2)
            store.apply_projection(event("sub_hist_superseded", EventKind.payment_succeeded, t0 + DAY / 2), decide)
            await sup.result()
            # signals: a payment method update, then the invoice voided
            t1 = await env.get_current_time()
            sig = await dunning.start_campaign("sub_hist_signals", "cus_h", "h@example.com", t1, decline_class="hard")
            await env.sleep(2 * DAY)
            await dunning.receive(event("sub_hist_signals", EventKind.payment_method_updated, t1 + 2 * DAY))
            await env.sleep(DAY)
            await dunning.receive(event("sub_hist_signals", EventKind.invoice_voided, t1 + 3 * DAY))
            await sig.result()
            # an outage: the worker first runs 11 days after the failure (skips, late actions)
            t2 = await env.get_current_time()
            fake_state.set_card(store.engine, "sub_hist_late", "decline:insufficient_funds")
            late_start = await dunning.start_campaign(
                "sub_hist_late", "cus_h", "h@example.com", t2 - 11 * DAY, decline_class="soft"
            )
            await env.sleep(DAY)
            await dunning.payment_recovered("sub_hist_late", "paid_out_of_band")
            await late_start.result()
            # a permanent failure: no email address (needs_attention), then paid
            t3 = await env.get_current_time()
            attention = await dunning.start_campaign("sub_hist_attention", "cus_none", None, t3, decline_class="hard")
            await env.sleep(DAY)
            await dunning.payment_recovered("sub_hist_attention", "paid_out_of_band")
            await attention.result()
            runs = [("full_campaign", full), ("recovered_update_day_8", rec), ("superseded_effect", sup),
                    ("signals_then_voided", sig), ("outage_catch_up", late_start), ("needs_attention", attention)]  # fmt: skip
            for name, handle in runs:
                first = (await handle.fetch_history())
                (HISTORIES / f"{tag}_{name}.json").write_text(json.dumps(first.to_json_dict(), indent=1))
            late = dunning.client.get_workflow_handle("dunning-sub_hist_full")
            history = await late.fetch_history()
            (HISTORIES / f"{tag}_recovered_after_cancel.json").write_text(json.dumps(history.to_json_dict(), indent=1))
        await env.shutdown()
        store.dispose()


if __name__ == "__main__":
    import sys

    asyncio.run(record(sys.argv[1]))
