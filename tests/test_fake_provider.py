"""The fake payment provider: scripted cards, the last decline again, calls recorded once
per idempotency key; on SQLite and PostgreSQL (the `store` fixture)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dunning.config import Settings
from dunning.providers import fake_state
from dunning.providers.actions import ChargeResult, provider_for
from dunning.providers.fake_actions import FakeProvider
from dunning.store.store import Store
from starter.fake_cli import calls_command, set_card_command


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("DUNNING_"):
            monkeypatch.delenv(name)


def failed_event(store: Store, event_id: str, subscription_id: str, code: str | None, *, provider: str = "fake",
                 event_type: str = "payment_failed") -> None:  # fmt: skip
    """An inbox row as the webhook writes it: the normalized event under payload["event"]."""
    event = {"provider": provider, "event_id": event_id, "event_type": event_type, "kind": event_type,
             "subscription_id": subscription_id, "decline_code": code}  # fmt: skip
    store.inbox_receive(provider, event_id, event_type, subscription_id, datetime.now(UTC), {"event": event})


def test_scripted_card(store: Store) -> None:
    fake = FakeProvider(store.engine)
    fake_state.set_card(store.engine, "sub_1", "succeed")
    assert fake_state.get_card(store.engine, "sub_1") == "succeed"
    ok = fake.retry_charge("sub_1", None, "k1")
    assert ok.status == "succeeded" and ok.decline_code is None and ok.reference and ok.reference.startswith("fake_charge_")

    fake_state.set_card(store.engine, "sub_1", "decline:insufficient_funds")
    declined = fake.retry_charge("sub_1", "in_1", "k2")
    assert declined == ChargeResult("declined", "insufficient_funds", "soft", reference=declined.reference)
    assert declined.reference != ok.reference
    fake_state.set_card(store.engine, "sub_1", "decline:expired_card")
    declined = fake.retry_charge("sub_1", None, "k3")
    assert (declined.status, declined.decline_code, declined.decline_class) == ("declined", "expired_card", "hard")
    assert [(c.action, c.idempotency_key, c.result) for c in fake_state.calls(store.engine, "sub_1")] == [
        ("charge", "k1", "succeeded"),
        ("charge", "k2", "declined:insufficient_funds"),
        ("charge", "k3", "declined:expired_card"),
    ]


def test_default_is_generic_decline(store: Store) -> None:
    result = FakeProvider(store.engine).retry_charge("sub_new", None, "k")
    assert (result.status, result.decline_code, result.decline_class) == ("declined", "generic_decline", "soft")


def test_default_is_the_last_decline_from_the_inbox(store: Store) -> None:
    failed_event(store, "evt_1", "sub_1", "insufficient_funds")
    failed_event(store, "evt_2", "sub_1", "expired_card")
    failed_event(store, "evt_3", "sub_1", None)  # no code: skipped
    failed_event(store, "evt_4", "sub_other", "fraudulent")  # another subscription
    failed_event(store, "evt_5", "sub_1", "lost_card", provider="stripe")  # another provider
    failed_event(store, "evt_6", "sub_1", "stolen_card", event_type="payment_succeeded")  # another type
    result = FakeProvider(store.engine).retry_charge("sub_1", None, "k")
    assert (result.status, result.decline_code, result.decline_class) == ("declined", "expired_card", "hard")


def test_default_is_the_last_decline_from_a_previous_charge(store: Store) -> None:
    fake = FakeProvider(store.engine)
    fake_state.set_card(store.engine, "sub_1", "decline:do_not_honor")
    fake.retry_charge("sub_1", None, "k1")
    assert fake_state.clear_card(store.engine, "sub_1") is True
    assert fake_state.clear_card(store.engine, "sub_1") is False
    assert fake_state.get_card(store.engine, "sub_1") is None
    again = fake.retry_charge("sub_1", None, "k2")
    assert (again.decline_code, again.decline_class) == ("do_not_honor", "soft")


def test_the_more_recent_of_inbox_and_own_charge_wins(store: Store) -> None:
    now = datetime.now(UTC)
    earlier = FakeProvider(store.engine, clock=lambda: now - timedelta(hours=1))
    fake_state.set_card(store.engine, "sub_1", "decline:expired_card")
    earlier.retry_charge("sub_1", None, "k1")  # recorded an hour ago
    fake_state.clear_card(store.engine, "sub_1")
    failed_event(store, "evt_1", "sub_1", "insufficient_funds")  # received now
    assert earlier.retry_charge("sub_1", None, "k2").decline_code == "insufficient_funds"

    later = FakeProvider(store.engine, clock=lambda: now + timedelta(hours=1))
    fake_state.set_card(store.engine, "sub_1", "decline:card_velocity_exceeded")
    later.retry_charge("sub_1", None, "k3")
    fake_state.clear_card(store.engine, "sub_1")
    assert later.retry_charge("sub_1", None, "k4").decline_code == "card_velocity_exceeded"


def test_same_idempotency_key_returns_the_first_result_once(store: Store) -> None:
    fake = FakeProvider(store.engine)
    fake_state.set_card(store.engine, "sub_1", "decline:insufficient_funds")
    first = fake.retry_charge("sub_1", None, "dunning-sub_1-retry-1")
    fake_state.set_card(store.engine, "sub_1", "succeed")  # the card changed; the key did not
    assert fake.retry_charge("sub_1", None, "dunning-sub_1-retry-1") == first
    assert fake.retry_charge("sub_1", None, "dunning-sub_1-retry-2").status == "succeeded"

    assert fake.cancel_subscription("sub_1", "dunning-sub_1-exhausted") == "canceled"
    assert fake.cancel_subscription("sub_1", "dunning-sub_1-exhausted") == "canceled"
    assert fake.mark_unpaid("sub_1", None, "dunning-sub_1-unpaid") == "unpaid"
    # the same key on another action is another call
    assert fake.mark_unpaid("sub_1", None, "dunning-sub_1-exhausted") == "unpaid"
    recorded = fake_state.calls(store.engine, "sub_1")
    assert [(c.action, c.idempotency_key, c.result) for c in recorded] == [
        ("charge", "dunning-sub_1-retry-1", "declined:insufficient_funds"),
        ("charge", "dunning-sub_1-retry-2", "succeeded"),
        ("cancel", "dunning-sub_1-exhausted", "canceled"),
        ("mark_unpaid", "dunning-sub_1-unpaid", "unpaid"),
        ("mark_unpaid", "dunning-sub_1-exhausted", "unpaid"),
    ]
    assert all(c.at.tzinfo is not None for c in recorded)


def test_record_call_and_calls(store: Store) -> None:
    first = fake_state.record_call(store.engine, "sub_a", "cancel", "k", "canceled")
    assert fake_state.record_call(store.engine, "sub_a", "cancel", "k", "something else") == first
    fake_state.record_call(store.engine, "sub_b", "charge", "k", "succeeded")
    assert [c.subscription_id for c in fake_state.calls(store.engine)] == ["sub_a", "sub_b"]
    assert [c.subscription_id for c in fake_state.calls(store.engine, "sub_b")] == ["sub_b"]
    assert fake_state.calls(store.engine, "sub_none") == []
    with pytest.raises(ValueError, match="action = 'refund'"):
        fake_state.record_call(store.engine, "sub_a", "refund", "k", "ok")


BAD_OUTCOMES = ["fail", "decline", "decline:", "decline:Bad Code", "decline:" + "x" * 65, "succeed ", "SUCCEED",
                "decline:a:b", None]  # fmt: skip


def test_bad_outcome_is_refused_naming_it(store: Store) -> None:
    for outcome in BAD_OUTCOMES:
        with pytest.raises(ValueError) as info:
            fake_state.set_card(store.engine, "sub_1", outcome)  # type: ignore[arg-type]
        assert f"outcome {outcome!r}:" in str(info.value)
        assert "'succeed' or 'decline:<code>'" in str(info.value)
    assert fake_state.get_card(store.engine, "sub_1") is None


def test_provider_for_fake_uses_the_store(store: Store, clean_env: None) -> None:
    fake = provider_for("fake", Settings(), store)
    assert isinstance(fake, FakeProvider) and fake.name == "fake" and fake.engine is store.engine
    assert fake.retry_charge("sub_1", None, "k").decline_code == "generic_decline"


def test_cli_functions(db_url: str, clean_env: None) -> None:
    settings = Settings(database_url=db_url)
    assert set_card_command(settings, "sub_1", "decline:insufficient_funds") == (
        "fake card for sub_1: charges now decline with insufficient_funds"
    )
    assert set_card_command(settings, "sub_2", "succeed") == "fake card for sub_2: charges now succeed"
    with pytest.raises(ValueError, match="'decline:Nope'"):
        set_card_command(settings, "sub_1", "decline:Nope")
    assert calls_command(settings, None) == "no fake provider calls"
    with Store.open(db_url) as store:
        fake = FakeProvider(store.engine)
        fake.retry_charge("sub_1", None, "dunning-sub_1-retry-1")
        fake.retry_charge("sub_2", None, "dunning-sub_2-retry-1")
    table = calls_command(settings, "sub_1").splitlines()
    assert table[0].split() == ["id", "at", "subscription", "action", "idempotency", "key", "result"]
    assert len(table) == 2
    assert table[1].split()[2:] == ["sub_1", "charge", "dunning-sub_1-retry-1", "declined:insufficient_funds"]
    assert len(calls_command(settings, None).splitlines()) == 3
    assert calls_command(settings, "sub_9") == "no fake provider calls for sub_9"
