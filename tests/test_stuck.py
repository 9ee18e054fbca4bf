"""The stuck gauge (dunning/store/stuck.py) and doctor's "stuck" check, on SQLite and
PostgreSQL. Rows are written by the engine's own writers: the projection (a failed
payment makes the subscription past_due), the campaign's claims, the pay-bad-debt claim,
the fake provider's account, the inbox's parking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dunning.config import Settings, load_settings
from dunning.contracts import BillingEvent, CampaignEnd, EventKind
from dunning.projection import decide
from dunning.providers import fake_account
from dunning.store import bad_debt, inbox_parking
from dunning.store.campaign_writes import claim_effect, finish_campaign
from dunning.store.store import Store
from dunning.store.stuck import ParkedEvent, StuckPayment, StuckStep, stuck
from starter.doctor import doctor, stuck_report
from tests.api_helpers import api_settings
from tests.test_cli_simulate_doctor import free_port

DAY = 86400.0
WINDOW = timedelta(minutes=30)
NOW = datetime.now(UTC).replace(microsecond=0)  # doctor reads the wall clock
T0 = NOW - timedelta(days=20)  # when the campaigns below began


def past_due(store: Store, sub: str, at: datetime = T0) -> datetime:
    """A failed payment at `at`: `sub` is past_due with that campaign anchor."""
    store.apply_projection(
        BillingEvent(
            provider="fake", event_id=f"evt_fail_{sub}_{at.timestamp():.0f}", event_type="payment.failed",
            kind=EventKind.payment_failed, occurred_at=at, subscription_id=sub, customer_id=f"cus_{sub}",
            customer_email=f"{sub}@example.com",
        ),
        decide,
    )  # fmt: skip
    return at


def exhaust(store: Store, sub: str, at: datetime, decline_class: str = "soft", plan_id: str = "plan_pro") -> None:
    """The campaign begun at `at` ends exhausted 14 days later: `sub` is in bad debt."""
    end = CampaignEnd(
        subscription_id=sub, customer_id=f"cus_{sub}", campaign_started_at=at, outcome="exhausted",
        reason="grace period over", at=at + timedelta(days=14), on_exhaustion="cancel",
        decline_class=decline_class, plan_id=plan_id,
    )  # fmt: skip
    finish_campaign(store, end, DAY)


def claim(store: Store, sub: str, key: str, at: datetime, started: datetime = T0) -> None:
    """The campaign's effect `key` claimed at `at` (then the worker died, or not yet)."""
    assert claim_effect(store, sub, started, key, f"msg-{sub}-{key}", f"tok-{sub}", at).state == "claimed"


def stuck_scenario(store: Store) -> None:
    """Three stuck payments, two stuck steps, one parked event; and what must not count."""
    for sub in ("sub_retry", "sub_retry_recent", "sub_retry_done", "sub_email", "sub_email_sent", "sub_term"):
        past_due(store, sub)
    claim(store, "sub_retry", "retry@3d", NOW - timedelta(hours=2))  # stuck
    claim(store, "sub_retry_recent", "retry@3d", NOW - timedelta(minutes=10))  # still within the window
    claim(store, "sub_retry_done", "retry@1d", NOW - timedelta(hours=3))
    store.mark_step_sent("sub_retry_done", "cus_sub_retry_done", T0, "retry@1d", "idem", NOW - timedelta(hours=3),
                         ledger_type="dunning.retry_attempted", data={"status": "failed"})  # fmt: skip
    claim(store, "sub_email", "first_notice", NOW - timedelta(hours=1))  # stuck
    claim(store, "sub_email_sent", "first_notice", NOW - timedelta(hours=1))
    store.mark_step_sent("sub_email_sent", "cus_sub_email_sent", T0, "first_notice", "m1", NOW - timedelta(hours=1))
    claim(store, "sub_term", "terminal", NOW - timedelta(minutes=40))  # stuck (a step, not a payment)

    fake_account.update(store.engine, "sub_fake", NOW - timedelta(hours=2), processing=True,
                        payment_started_at=NOW - timedelta(minutes=45))  # fmt: skip  # stuck
    fake_account.update(
        store.engine, "sub_fake_recent", NOW, processing=True, payment_started_at=NOW - timedelta(minutes=5)
    )
    fake_account.update(
        store.engine, "sub_fake_idle", NOW, processing=False, payment_started_at=NOW - timedelta(days=1)
    )

    for sub in ("sub_bd", "sub_bd_answered"):
        exhaust(store, sub, past_due(store, sub))
    bad_debt.claim(store, "sub_bd", "key-1", "card_updated", NOW - timedelta(hours=1))  # stuck: no answer
    answered = bad_debt.claim(store, "sub_bd_answered", "key-2", "card_updated", NOW - timedelta(hours=1))
    bad_debt.finish_failed(store, answered, 402, {"error": "card_declined"}, NOW - timedelta(hours=1))

    store.inbox_receive("fake", "evt_poison", "payment_failed", "sub_poison", NOW - timedelta(days=1), {},
                        customer_email="poison@example.com")  # fmt: skip
    failed = inbox_parking.dispatch_failed(store, "fake", "evt_poison", "rejected for poison@example.com", 1)
    assert failed.status == "parked"
    store.inbox_receive("fake", "evt_waiting", "payment_failed", "sub_waiting", NOW, {})  # pending, not parked


def test_stuck_names_exactly_what_started_and_never_finished(store):
    stuck_scenario(store)
    found = stuck(store, WINDOW, NOW)
    assert found.payments_in_flight == 3
    assert found.payments == (
        StuckPayment("sub_retry", T0, NOW - timedelta(hours=2), "retry", "retry@3d"),
        StuckPayment("sub_bd", T0, NOW - timedelta(hours=1), "bad_debt", bad_debt.attempt_key("key-1")),
        StuckPayment("sub_fake", None, NOW - timedelta(minutes=45), "provider"),
    )
    assert found.unconfirmed_steps == 2
    assert found.steps == (
        StuckStep("sub_email", T0, "first_notice", NOW - timedelta(hours=1)),
        StuckStep("sub_term", T0, "terminal", NOW - timedelta(minutes=40)),
    )
    assert found.parked_events == 1
    assert found.parked == (ParkedEvent("fake", "evt_poison", "sub_poison", "rejected for <address>"),)
    assert found.any and "example.com" not in repr(found)  # ids only


def test_limit_bounds_the_lists_never_the_counts(store):
    stuck_scenario(store)
    found = stuck(store, WINDOW, NOW, limit=1)
    assert (found.payments_in_flight, found.unconfirmed_steps, found.parked_events) == (3, 2, 1)
    assert [p.subscription_id for p in found.payments] == ["sub_retry"]  # the oldest
    assert [s.subscription_id for s in found.steps] == ["sub_email"]
    counts_only = stuck(store, WINDOW, NOW, limit=0)
    assert (counts_only.payments_in_flight, counts_only.payments, counts_only.steps) == (3, (), ())


def test_the_window_decides_what_is_stuck(store):
    stuck_scenario(store)
    wide = stuck(store, timedelta(hours=3), NOW)  # nothing claimed that long ago is unrecorded
    assert (wide.payments_in_flight, wide.unconfirmed_steps, wide.parked_events) == (0, 0, 1)
    narrow = stuck(store, timedelta(minutes=1), NOW)
    assert {p.subscription_id for p in narrow.payments} == {"sub_retry", "sub_retry_recent", "sub_bd", "sub_fake",
                                                              "sub_fake_recent"}  # fmt: skip


def test_nothing_stuck_on_an_empty_database(store):
    found = stuck(store, WINDOW, NOW)
    assert not found.any and (found.payments, found.steps, found.parked) == ((), (), ())


# --- doctor -------------------------------------------------------------------------------
@pytest.fixture
def doctor_settings(tmp_path: Path, db_url: str) -> Settings:
    return api_settings(load_settings(home=tmp_path, database_url=db_url), temporal_address=f"127.0.0.1:{free_port()}")


def run_doctor(settings: Settings) -> list[str]:
    lines: list[str] = []
    doctor(settings, timeout=2, say=lines.append)
    return lines


def test_doctor_warns_with_the_ids_of_stuck_work(store, doctor_settings):
    stuck_scenario(store)
    lines = [line for line in run_doctor(doctor_settings) if line.split()[1:2] == ["stuck"]]
    assert [line.split()[0] for line in lines] == ["WARN", "WARN", "WARN"]
    payments, steps, parked = lines
    assert "3 payments started over 30m ago with no recorded result" in payments
    assert "sub_retry retry@3d since" in payments and "sub_fake processing at the provider" in payments
    assert f"sub_bd pay-bad-debt {bad_debt.attempt_key('key-1')}" in payments and "sub_retry_recent" not in payments
    assert (
        "2 steps claimed over 30m ago" in steps and "sub_email first_notice" in steps and "sub_term terminal" in steps
    )
    assert "1 parked event" in parked and "fake/evt_poison (sub_poison)" in parked
    assert not any("example.com" in line for line in lines)


def test_doctor_stuck_check_uses_the_recompute_window(store, doctor_settings):
    stuck_scenario(store)
    recompute = doctor_settings.recompute.model_copy(update={"in_flight_window_seconds": 4 * 3600})
    wide = doctor_settings.model_copy(update={"recompute": recompute})
    (line,) = (line for level, line in stuck_report(wide) if level == "WARN")  # only the parked event
    assert line.startswith("1 parked event")


def test_doctor_ok_when_nothing_is_stuck(store, doctor_settings):
    assert "ok    stuck     nothing stuck: no payment or step unconfirmed for over 30m, no parked event" in run_doctor(
        doctor_settings
    )


def test_doctor_stuck_check_never_fails(db_url, doctor_settings):
    """Unmigrated (no tables): a warning. Unreachable: the database check alone reports it."""
    (level, message), *_ = stuck_report(doctor_settings)
    assert level == "WARN" and message.startswith("cannot check:") and "migrated" in message

    unreachable = doctor_settings.model_copy(
        update={"database_url": "postgresql+psycopg://doctor:secret@127.0.0.1:1/nothing?connect_timeout=1"}
    )
    lines = run_doctor(unreachable)
    assert any(line.startswith("FAIL  database") for line in lines)
    assert not any(line.split()[1] == "stuck" for line in lines)
