"""After an outage longer than the gap between actions (no worker ran while several were
due), each missed action is handled by a rule of `dunning.journey` and recorded in the
ledger: one catch-up charge (never several), the entitlement jumps to the rung that holds
now, of several overdue emails only the latest is sent, and its words are true.
Time-skipping server, fake provider, emails over SMTP; SQLite and PostgreSQL (`store`)."""

from __future__ import annotations

from datetime import timedelta

from dunning.email.render import longdate
from dunning.providers import fake_state
from dunning.store.entitlements import get_entitlement
from tests.temporal_fixtures import ledger

DAY = timedelta(days=1)


def near(seconds: float, expected: timedelta) -> bool:
    return abs(seconds - expected.total_seconds()) < 60


async def _late_campaign(tenv, dunning, store, sub: str, late: timedelta):
    """A campaign whose worker first runs `late` after the failure (an outage from the start:
    on the time-skipping server, timers cannot fire without a worker, so the anchor is set
    back instead; the journey sees the same thing: several actions due at once)."""
    fake_state.set_card(store.engine, sub, "decline:insufficient_funds")
    anchor = await tenv.get_current_time() - late
    await dunning.start_campaign(
        sub, f"cus_{sub}", "ada@example.com", anchor, provider="fake", decline_class="soft", invoice_id="in_1"
    )
    return anchor


async def test_an_outage_across_retry_days_a_rung_and_emails_is_caught_up_by_rule(
    tenv, new_sub, dunning, store, mailbox
):
    sub = new_sub("sub_outage")
    anchor = await _late_campaign(tenv, dunning, store, sub, 11 * DAY)
    await tenv.sleep(DAY / 2)
    state = await dunning.status(sub)

    # one catch-up charge for the retry days missed (1, 3, 5, 7), never several at once
    charges = [c for c in fake_state.calls(store.engine, sub) if c.action == "charge"]
    assert [c.idempotency_key.rsplit(":", 1)[1] for c in charges] == ["retry@7d"]
    (tried,) = ledger(store, sub, "dunning.retry_attempted")
    assert near(tried.data["late_by"], 4 * DAY)
    # the entitlement jumps to the rung that holds now (suspended from day 10), limited skipped
    assert get_entitlement(store, sub) == "suspended"
    (changed,) = ledger(store, sub, "dunning.consequence_changed")
    assert changed.data["level"] == "suspended" and near(changed.data["late_by"], DAY)
    skipped = {e.step_key: e.data["reason"] for e in ledger(store, sub, "dunning.action_skipped")}
    assert skipped == {
        "retry@1d": "superseded_by_later", "retry@3d": "superseded_by_later", "retry@5d": "superseded_by_later",
        "level:limited@7d": "superseded_by_later", "first_notice": "superseded_by_later",
    }  # fmt: skip
    # of the overdue emails only the latest (the day-5 reminder) goes out, late, and true:
    # it does not claim a first notice the customer never received
    assert mailbox.steps() == ["reminder"]
    (reminder,) = ledger(store, sub, "dunning.step_sent")
    assert near(reminder.data["late_by"], 6 * DAY)
    body = " ".join(mailbox.messages()[0].get_body(("plain",)).get_content().split())
    assert "first let you know" not in body and f"overdue since {longdate(anchor)}" in body
    assert state.outcome == "running" and state.steps_skipped == ["first_notice"]
    await dunning.payment_recovered(sub)


async def test_a_final_notice_that_would_leave_too_little_notice_is_skipped(tenv, new_sub, dunning, store, mailbox):
    sub = new_sub("sub_late_final")
    await _late_campaign(tenv, dunning, store, sub, 13.6 * DAY)
    await tenv.sleep(DAY / 4)
    assert mailbox.steps() == []  # no "cancelled on <in 10 hours>" notice
    skipped = {e.step_key: e.data["reason"] for e in ledger(store, sub, "dunning.action_skipped")}
    assert skipped["reminder"] == "superseded_by_later"
    assert skipped["final_notice"] == "notice_too_short"
    assert (await dunning.status(sub)).steps_skipped == ["first_notice", "reminder", "final_notice"]
    await dunning.payment_recovered(sub)


async def test_a_reminder_names_the_day_the_first_notice_really_went_out(tenv, new_sub, dunning, store, mailbox):
    sub = new_sub("sub_on_time")
    anchor = await _late_campaign(tenv, dunning, store, sub, timedelta(0))
    await tenv.sleep(5 * DAY + DAY / 4)
    assert mailbox.steps() == ["first_notice", "reminder"]
    body = " ".join(mailbox.messages()[1].get_body(("plain",)).get_content().split())
    assert f"first let you know about this on {longdate(anchor)}" in body
    assert all("late_by" not in e.data for e in ledger(store, sub, "dunning.step_sent"))
    await dunning.payment_recovered(sub)
