"""The whole cadence on Temporal's time-skipping server, emails received over SMTP."""

from datetime import timedelta

import pytest

from dunning.contracts import BillingEvent, EventKind
from dunning.projection import decide
from starter.client import UnknownSubscription
from tests.temporal_fixtures import ledger, without_engine_retries

DAY = timedelta(days=1)


@pytest.fixture
def settings(settings):
    return without_engine_retries(settings)


def near(actual: timedelta, expected: timedelta) -> bool:
    return abs(actual - expected) < timedelta(minutes=1)


async def test_full_campaign_sends_three_emails_on_days_0_5_12_and_ends_exhausted(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign("sub_full", "cus_1", "ada@example.com", anchor)
    state = await handle.result()

    assert state.outcome == "exhausted"
    assert state.steps_sent == ["first_notice", "reminder", "final_notice"]
    msgs = mailbox.messages()
    assert [m["X-Dunning-Step"] for m in msgs] == ["first_notice", "reminder", "final_notice"]
    assert {m["To"] for m in msgs} == {"ada@example.com"}
    assert len({m["Message-ID"] for m in msgs}) == 3
    sent = ledger(store, "sub_full", "dunning.step_sent")
    offsets = [e.occurred_at - anchor for e in sent]
    assert all(near(o, d * DAY) for o, d in zip(offsets, [0, 5, 12], strict=True)), offsets
    (exhausted,) = ledger(store, "sub_full", "dunning.exhausted")
    assert near(exhausted.occurred_at - anchor, 14 * DAY)
    sub = store.get_subscription("sub_full")
    assert sub.status == "canceled" and sub.dunning_campaign_started_at is None
    status = await dunning.status("sub_full")
    assert status.outcome == "exhausted" and status.stage == "exhausted"


async def test_recovery_on_day_3_stops_at_once_after_one_email(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign("sub_rec", "cus_2", "bo@example.com", anchor)
    await tenv.sleep(3 * DAY)
    running = await dunning.status("sub_rec")
    assert running.outcome == "running" and running.steps_sent == ["first_notice"]
    assert running.next_step.key == "reminder" and near(running.next_step.at - anchor, 5 * DAY)
    answer = await dunning.payment_recovered("sub_rec", "card_updated")
    assert (answer.status, answer.outcome) == ("recovered", "recovered")
    state = await handle.result()

    assert state.outcome == "recovered" and state.reason == "card_updated"
    assert near(state.ended_at - anchor, 3 * DAY)  # at once, not at the next step
    assert mailbox.steps() == ["first_notice"]
    assert [e.type for e in store.events("sub_rec")] == [
        "dunning.campaign_started",
        "dunning.step_sent",
        "dunning.recovered",
    ]
    sub = store.get_subscription("sub_rec")
    assert sub.status == "active" and sub.dunning_campaign_started_at is None
    again = await dunning.payment_recovered("sub_rec")  # nothing running: the true answer, nothing done
    assert (again.status, again.outcome) == ("already_ended", "recovered")
    assert len(ledger(store, "sub_rec", "dunning.recovered")) == 1


async def test_an_effect_that_finds_the_subscription_paid_is_superseded_and_ends_the_campaign(
    tenv, dunning, store, mailbox
):
    """The projection recorded a payment but no message reached the campaign (the API
    died before dispatch): the reminder's own claim transaction sees it and sends nothing."""
    anchor = await tenv.get_current_time()
    handle = await dunning.start_campaign("sub_guard", "cus_3", "cy@example.com", anchor)
    await tenv.sleep(DAY)
    paid = BillingEvent(
        provider="fake", event_id="evt_paid_quiet", event_type="payment.succeeded", kind=EventKind.payment_succeeded,
        occurred_at=anchor + DAY, subscription_id="sub_guard", customer_id="cus_3",
    )  # fmt: skip
    assert store.apply_projection(paid, decide).action == "recover"  # recorded, never dispatched
    state = await handle.result()

    assert state.outcome == "recovered" and "active" in state.reason
    assert mailbox.steps() == ["first_notice"]
    assert near(state.ended_at - anchor, 5 * DAY)  # found at the reminder's guard, nothing sent


async def test_two_starts_make_one_campaign(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    first = await dunning.start_campaign("sub_dup", "cus_4", "di@example.com", anchor)
    second = await dunning.start_campaign("sub_dup", "cus_4", "di@example.com", anchor + timedelta(hours=1))
    assert (await second.describe()).run_id == (await first.describe()).run_id
    await first.result()
    assert mailbox.steps() == ["first_notice", "reminder", "final_notice"]
    assert len(ledger(store, "sub_dup", "dunning.campaign_started")) == 1


async def test_new_failure_after_recovery_is_a_new_campaign_identity(tenv, dunning, store, mailbox):
    anchor = await tenv.get_current_time()
    first = await dunning.start_campaign("sub_again", "cus_5", "ed@example.com", anchor)
    await tenv.sleep(DAY)
    await dunning.payment_recovered("sub_again")
    assert (await first.result()).outcome == "recovered"

    second_anchor = await tenv.get_current_time()
    first_run = (await first.describe()).run_id
    second = await dunning.start_campaign("sub_again", "cus_5", "ed@example.com", second_anchor)
    assert (await second.describe()).run_id != first_run
    await tenv.sleep(DAY)
    await dunning.payment_recovered("sub_again")
    state = await second.result()

    assert state.campaign_started_at == second_anchor and state.steps_sent == ["first_notice"]
    msgs = mailbox.messages()
    assert [m["X-Dunning-Step"] for m in msgs] == ["first_notice", "first_notice"]
    assert msgs[0]["Message-ID"] != msgs[1]["Message-ID"]
    assert len(ledger(store, "sub_again", "dunning.step_sent")) == 2


async def test_status_of_a_subscription_that_never_had_a_campaign(dunning):
    with pytest.raises(UnknownSubscription, match="sub_never"):
        await dunning.status("sub_never")
