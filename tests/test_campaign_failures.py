"""Failures are states, not lost events: an SMTP outage delays a step; a claim whose send
was never confirmed is reported and not resent blindly."""

import socket
from datetime import UTC, datetime, timedelta

import pytest

from dunning.email.outbox import OutboxSink, read_outbox
from tests.temporal_fixtures import running_worker, without_engine_retries

DAY = timedelta(days=1)


@pytest.fixture
def settings(settings):
    return without_engine_retries(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_smtp_outage_delays_the_step_and_loses_nothing(tenv, store, settings, tmp_path):
    port = free_port()  # nothing listens yet: SMTP is down
    settings = settings.model_copy(update={"smtp_port": port})
    outbox = tmp_path / "late-outbox"
    async with running_worker(tenv, settings, store) as dunning:
        anchor = await tenv.get_current_time()
        handle = await dunning.start_campaign("sub_smtp", "cus_1", "ada@example.com", anchor)
        await tenv.sleep(timedelta(hours=2))  # retries back off while the server is down
        state = await dunning.status("sub_smtp")
        assert state.steps_sent == [] and state.outcome == "running"
        with OutboxSink(outbox, port=port):
            await tenv.sleep(timedelta(hours=1))
            assert [m["X-Dunning-Step"] for m in read_outbox(outbox)] == ["first_notice"]
            await dunning.payment_recovered("sub_smtp")
            assert (await handle.result()).steps_sent == ["first_notice"]
    assert len(read_outbox(outbox)) == 1


async def test_claim_without_confirmation_is_reported_not_resent(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    # A previous worker claimed the first step and died before confirming the send.
    store.claim_step("sub_claim", anchor, "first_notice", "<x@example.com>", "dead-worker", datetime.now(UTC))
    handle = await dunning.start_campaign("sub_claim", "cus_2", "bo@example.com", anchor)
    await tenv.sleep(DAY)
    state = await dunning.status("sub_claim")
    assert state.steps_unconfirmed == ["first_notice"] and state.steps_sent == []
    assert mailbox.steps() == []
    assert [key for _, _, key in store.unconfirmed_deliveries()] == ["first_notice"]
    await dunning.payment_recovered("sub_claim")
    await handle.result()


async def test_customer_without_email_is_a_visible_state_not_a_stuck_campaign(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign("sub_noemail", "cus_none", None, anchor)
    await tenv.sleep(DAY)
    state = await dunning.status("sub_noemail")
    assert state.steps_failed == ["first_notice"] and state.outcome == "running"
    await dunning.payment_recovered("sub_noemail")
    assert (await handle.result()).outcome == "recovered"
    assert mailbox.steps() == []
