"""Webhook inbox and the projection write, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from dunning.contracts import BillingEvent, EventKind
from dunning.projection import decide
from dunning.store.store import Store

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def event(event_id: str, kind: EventKind = EventKind.payment_failed, minutes: int = 0, **over) -> BillingEvent:
    values = dict(provider="stripe", event_id=event_id, event_type="invoice.payment_failed", kind=kind,
                  occurred_at=T0 + timedelta(minutes=minutes), subscription_id="sub_1", customer_id="cus_1",
                  decline_class="soft" if kind is EventKind.payment_failed else None)  # fmt: skip
    values.update(over)
    return BillingEvent(**values)


def receive(store: Store, e: BillingEvent) -> str:
    payload = {"event": e.for_workflow().model_dump(mode="json")}
    return store.inbox_receive(e.provider, e.event_id, e.event_type, e.subscription_id, e.occurred_at, payload)


def test_inbox_states(store):
    e = event("evt_1")
    assert receive(store, e) == "new"
    assert receive(store, e) == "received"
    assert store.inbox_mark_dispatched("stripe", "evt_1", "started") is True
    assert store.inbox_mark_dispatched("stripe", "evt_1") is False
    assert receive(store, e) == "dispatched"
    row = store.inbox_get("stripe", "evt_1")
    assert (row.status, row.reason, row.subscription_id, row.occurred_at) == ("dispatched", "started", "sub_1", T0)
    assert row.dispatched_at is not None

    assert store.inbox_ignore("stripe", "evt_2", "charge.succeeded", "unhandled_type") is True
    assert store.inbox_ignore("stripe", "evt_2", "charge.succeeded", "unhandled_type") is False
    assert receive(store, event("evt_2")) == "ignored"
    assert store.inbox_get("stripe", "evt_2").reason == "unhandled_type"
    assert store.inbox_get("braintree", "evt_1") is None  # ids are per provider


def test_undispatched_oldest_event_first_and_only_old_enough(store):
    for event_id, minutes in (("evt_b", 5), ("evt_a", 1), ("evt_c", 3)):
        receive(store, event(event_id, minutes=minutes))
    store.inbox_mark_dispatched("stripe", "evt_c")
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert [r.event_id for r in store.inbox_undispatched(later)] == ["evt_a", "evt_b"]
    assert store.inbox_undispatched(datetime.now(UTC) - timedelta(minutes=1)) == []
    assert len(store.inbox_undispatched(later, limit=1)) == 1


def test_apply_projection_writes_the_decision_once_and_keeps_it_on_the_inbox_row(store):
    e = event("evt_1", customer_email="ada@example.com", customer_name="Ada")
    receive(store, e)
    d = store.apply_projection(e, decide)
    assert (d.action, d.anchor) == ("start", T0)
    sub = store.get_subscription("sub_1")
    assert (sub.status, sub.dunning_campaign_started_at, sub.last_event_at, sub.decline_class, sub.provider) == (
        "past_due", T0, T0, "soft", "stripe"
    )  # fmt: skip
    assert (store.get_customer("cus_1").email, store.get_customer("cus_1").name) == ("ada@example.com", "Ada")
    assert store.inbox_get("stripe", "evt_1").payload["decision"]["action"] == "start"
    assert "ada@example.com" not in str(store.inbox_get("stripe", "evt_1").payload)

    # a redelivery gets the stored decision, not a new one ("update" now that it is past_due)
    assert store.apply_projection(e, decide) == d
    # without an inbox row every call decides afresh
    assert store.apply_projection(event("evt_free", minutes=1), decide).action == "update"


def test_stale_event_writes_nothing_not_even_the_customer(store):
    store.apply_projection(event("evt_paid", EventKind.payment_succeeded, minutes=10), decide)
    d = store.apply_projection(event("evt_old", minutes=0, customer_email="old@example.com"), decide)
    assert d.action == "stale"
    sub = store.get_subscription("sub_1")
    assert (sub.status, sub.last_event_at) == ("active", T0 + timedelta(minutes=10))
    assert store.get_customer("cus_1") is None


def test_oversized_email_or_name_is_refused_by_the_event_naming_the_field():
    """Never cut: the event itself refuses (the webhook answers 400 before any write)."""
    with pytest.raises(ValidationError, match="customer_email is 405 characters; at most 320 are accepted"):
        event("evt_1", customer_email="a" * 400 + "@x.io")
    with pytest.raises(ValidationError, match="customer_name is 300 characters; at most 255 are accepted"):
        event("evt_1", customer_name="N" * 300)


def test_concurrent_failures_of_one_subscription_start_once(store):
    """Eight deliveries of different failure events at once: exactly one start."""
    barrier = threading.Barrier(8)
    actions: list[str] = []
    errors: list[BaseException] = []

    def deliver(i: int) -> None:
        try:
            barrier.wait()
            actions.append(store.apply_projection(event(f"evt_{i}", minutes=0), decide).action)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(actions) == ["start"] + ["update"] * 7
