"""The pure projection: what one billing event does to a subscription, in any arrival order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dunning.contracts import BillingEvent, EventKind
from dunning.projection import STATUS_OF, Decision, decide
from dunning.store.store import Subscription

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
K = EventKind


def ev(kind: EventKind | None, minutes: float = 0, *, decline: str | None = None, customer: str | None = "cus_1",
       n: int = 0) -> BillingEvent:  # fmt: skip
    if decline is None and kind is K.payment_failed:
        decline = "soft"
    if kind is K.payment_action_required:
        decline = "action_required"
    return BillingEvent(
        provider="fake", event_id=f"evt_{n}_{minutes}", event_type=kind.value if kind else "charge.refunded",
        kind=kind, occurred_at=T0 + timedelta(minutes=minutes), subscription_id="sub_1", customer_id=customer,
        decline_class=decline,
    )  # fmt: skip


def sub(status: str, anchor: datetime | None = None, last: datetime | None = None, **over) -> Subscription:
    values = dict(id="sub_1", customer_id="cus_1", provider="fake", status=status,
                  dunning_campaign_started_at=anchor, entitlement="full", decline_class=None, last_event_at=last)  # fmt: skip
    values.update(over)
    return Subscription(**values)


def apply(current: Subscription | None, d: Decision) -> Subscription | None:
    if not d.write:
        return current
    return sub(d.status, d.anchor, d.last_event_at, decline_class=d.decline_class, customer_id=d.customer_id,
               provider=d.provider)  # fmt: skip


def run(events: list[BillingEvent], current: Subscription | None = None) -> tuple[Subscription | None, list[str]]:
    actions = []
    for e in events:
        d = decide(current, e)
        actions.append(d.action)
        current = apply(current, d)
    return current, actions


# --- each transition -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kind", "action", "new_status"),
    [
        (None, K.payment_failed, "start", "past_due"),
        ("active", K.payment_failed, "start", "past_due"),
        ("uncollectible", K.payment_action_required, "start", "past_due"),
        ("past_due", K.payment_failed, "update", "past_due"),
        ("past_due", K.payment_action_required, "update", "past_due"),
        ("past_due", K.payment_succeeded, "recover", "active"),
        ("past_due", K.bad_debt_paid, "recover", "active"),
        ("past_due", K.invoice_voided, "resolve", "active"),
        ("past_due", K.invoice_marked_uncollectible, "resolve", "uncollectible"),
        ("past_due", K.subscription_canceled, "resolve", "canceled"),
        ("active", K.payment_succeeded, "none", "active"),
        (None, K.payment_succeeded, "none", "active"),
        ("active", K.invoice_marked_uncollectible, "none", "uncollectible"),
        ("active", K.subscription_canceled, "none", "canceled"),
        ("canceled", K.payment_failed, "none", "canceled"),
        ("canceled", K.bad_debt_paid, "none", "canceled"),
        ("past_due", K.payment_method_updated, "update", "past_due"),
        ("active", K.payment_method_updated, "none", "active"),
        ("past_due", K.drift_detected, "none", "past_due"),
        ("past_due", None, "none", "past_due"),
    ],
)  # fmt: skip
def test_transition(status: str | None, kind: EventKind | None, action: str, new_status: str) -> None:
    anchor = T0 - timedelta(days=2) if status == "past_due" else None
    current = None if status is None else sub(status, anchor, T0 - timedelta(days=1))
    d = decide(current, ev(kind))
    assert (d.action, d.status) == (action, new_status)
    if action == "start":
        assert d.anchor == T0 and d.write  # the provider's failure time, not arrival time
    elif new_status == "past_due":
        assert d.anchor == anchor  # an update never moves the anchor
    else:
        assert d.anchor is None
    assert d.write == (kind in STATUS_OF)  # events without a status never touch the row


def test_stale_event_changes_nothing_and_does_nothing() -> None:
    current = sub("active", None, T0)
    d = decide(current, ev(K.payment_failed, -1))
    assert (d.action, d.write, d.status, d.anchor, d.last_event_at) == ("stale", False, "active", None, T0)


def test_paid_processed_before_an_earlier_failure_means_no_campaign() -> None:
    final, actions = run([ev(K.payment_succeeded, 10), ev(K.payment_failed, 0)])
    assert actions == ["none", "stale"]
    assert (final.status, final.dunning_campaign_started_at, final.last_event_at) == ("active", None, T0 + timedelta(minutes=10))


def test_a_late_cancellation_still_cancels_and_resolves_the_campaign() -> None:
    final, actions = run([ev(K.payment_failed, 10), ev(K.subscription_canceled, 5)])
    assert actions == ["start", "resolve"]
    assert (final.status, final.last_event_at) == ("canceled", T0 + timedelta(minutes=10))


def test_equal_times_apply_in_arrival_order() -> None:
    _, actions = run([ev(K.payment_failed, 0), ev(K.payment_succeeded, 0)])
    assert actions == ["start", "recover"]


def test_customer_id_falls_back_to_the_known_one_then_the_subscription() -> None:
    assert decide(None, ev(K.payment_failed, customer=None)).customer_id == "sub_1"
    assert decide(sub("active", customer_id="cus_9"), ev(K.payment_failed, customer=None)).customer_id == "cus_9"
    assert decide(sub("active", customer_id="cus_9"), ev(K.payment_failed, customer="cus_2")).customer_id == "cus_2"


def test_decline_class_follows_the_latest_failure_and_clears_on_leaving_past_due() -> None:
    final, _ = run([ev(K.payment_failed, 0, decline="soft"), ev(K.payment_failed, 1, decline="hard")])
    assert final.decline_class == "hard" and final.dunning_campaign_started_at == T0
    final, _ = run([ev(K.payment_failed, 0, decline="soft"), ev(K.payment_succeeded, 1)])
    assert final.decline_class is None


def test_decision_round_trips_as_json() -> None:
    d = decide(None, ev(K.payment_failed))
    assert Decision.model_validate(d.model_dump(mode="json")) == d


def test_no_subscription_is_refused() -> None:
    with pytest.raises(ValueError, match="names no subscription"):
        decide(None, ev(K.payment_failed).model_copy(update={"subscription_id": None}))


# --- any arrival order ---------------------------------------------------------------
KINDS = [K.payment_failed, K.payment_action_required, K.payment_succeeded, K.bad_debt_paid, K.invoice_voided,
         K.invoice_marked_uncollectible, K.subscription_canceled, K.payment_method_updated, K.drift_detected, None]  # fmt: skip


@st.composite
def event_sets(draw: st.DrawFn) -> list[BillingEvent]:
    minutes = draw(st.lists(st.integers(0, 10_000), min_size=1, max_size=8, unique=True))
    out = []
    for i, m in enumerate(minutes):
        kind = draw(st.sampled_from(KINDS))
        decline = draw(st.sampled_from(["soft", "hard", "unknown"])) if kind is K.payment_failed else None
        out.append(ev(kind, m, decline=decline, n=i))
    return out


STARTS = st.one_of(
    st.none(),
    st.builds(lambda s, a: sub(s, T0 - timedelta(days=1) if s == "past_due" else None,
                               T0 - timedelta(days=1) if a else None),  # fmt: skip
              st.sampled_from(["active", "past_due", "uncollectible", "canceled"]), st.booleans()),
)


def expected_status(events: list[BillingEvent], start: Subscription | None) -> str | None:
    """Last writer wins on provider time, except that canceled is terminal."""
    if (start and start.status == "canceled") or any(e.kind is K.subscription_canceled for e in events):
        return "canceled"
    bearing = [e for e in events if e.kind in STATUS_OF]
    if not bearing:
        return start.status if start else None
    return STATUS_OF[max(bearing, key=lambda e: e.occurred_at).kind]


@settings(max_examples=300, deadline=None)
@given(events=event_sets(), data=st.data(), start=STARTS)
def test_any_arrival_order_ends_in_the_event_time_projection(events, data, start) -> None:
    arrival = data.draw(st.permutations(events))
    in_time, _ = run(sorted(events, key=lambda e: e.occurred_at), start)
    as_arrived, _ = run(arrival, start)

    def facts(s: Subscription | None):
        if s is None:
            return None
        return (s.status, s.last_event_at, s.dunning_campaign_started_at is None, s.decline_class, s.customer_id)

    assert facts(as_arrived) == facts(in_time)
    final_status = as_arrived.status if as_arrived else None
    assert final_status == expected_status(events, start)
    if as_arrived is not None and as_arrived.status == "past_due":
        # the anchor is a failure's provider time (the first of the run the engine saw)
        failures = {e.occurred_at for e in events if e.kind in (K.payment_failed, K.payment_action_required)}
        if start is not None and start.status == "past_due":
            failures.add(start.dunning_campaign_started_at)
        assert as_arrived.dunning_campaign_started_at in failures
        last = as_arrived.last_event_at
        assert last is None or as_arrived.dunning_campaign_started_at <= last


@settings(max_examples=300, deadline=None)
@given(events=event_sets(), data=st.data(), start=STARTS)
def test_never_start_from_a_stale_event_nor_twice_in_one_past_due_run(events, data, start) -> None:
    current = start
    for e in data.draw(st.permutations(events)):
        d = decide(current, e)
        if d.action == "start":
            assert current is None or current.last_event_at is None or e.occurred_at >= current.last_event_at
            assert current is None or current.status not in ("past_due", "canceled")
            assert d.anchor == e.occurred_at
        if current is not None and current.last_event_at and e.occurred_at < current.last_event_at:
            assert d.action in ("stale", "resolve", "none") and (d.action != "none" or not d.write or
                                                                   e.kind is K.subscription_canceled)  # fmt: skip
        current = apply(current, d)
