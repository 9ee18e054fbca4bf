"""One structured line per campaign event (activities.campaign_log), ids only: what the
terminal running the worker shows for a whole exhausted campaign on the time-skipping server."""

from __future__ import annotations

import logging

import pytest

from dunning.providers import fake_state
from tests.temporal_fixtures import running_worker

pytestmark = pytest.mark.asyncio


async def test_each_campaign_event_is_one_line_with_ids_only(tenv, settings, store, new_sub, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dunning.campaign")
    async with running_worker(tenv, settings, store) as client:
        sub = new_sub("log")
        fake_state.set_card(store.engine, sub, "decline:insufficient_funds")
        await client.fail_payment(sub, "cus_log", "ada.lovelace@example.com", await client.now(), name="Ada Lovelace")
        state = await client._handle(sub).result()
    lines = [r.getMessage() for r in caplog.records if r.name == "dunning.campaign" and f"subscription={sub}" in r.getMessage()]
    events = [next(p.split("=", 1)[1] for p in line.split() if p.startswith("event=")) for line in lines]
    assert events[0] == "started" and events[-1] == "ended" and "outcome=exhausted" in lines[-1]
    assert events.count("step_sent") == len(state.steps_sent) == 3
    assert events.count("retry") == len(state.retries) > 0 and "result=declined decline_class=soft" in lines[events.index("retry")]
    assert events.count("consequence") == 2 and events.count("terminal") == 1
    assert not any("@" in line or "Ada" in line for line in lines)  # ids only
