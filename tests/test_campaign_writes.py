"""The campaign's own writes (dunning/store/campaign_writes.py), on SQLite and PostgreSQL.

Each write checks, in its own transaction, that the subscription is still past_due with
the campaign's anchor, and a campaign's end is one transaction (see tests/db_fixtures.py).
Subscriptions enter and leave dunning the real way: billing events through
`Store.apply_projection(event, decide)`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select

from dunning.contracts import BillingEvent, CampaignEnd, EntitlementChange, EventKind, Superseded
from dunning.projection import decide
from dunning.store import campaign_writes
from dunning.store.campaign_writes import change_entitlement, claim_effect, finish_campaign
from dunning.store.schema import step_deliveries
from dunning.store.store import EffectClaim, Store

T0 = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
DAY = timedelta(days=1)
SUB, CUS = "sub_1", "cus_1"


def Stale(outcome: str, reason: str, kind: str) -> Superseded:  # noqa: N802 - reads as the value it builds
    return Superseded(outcome=outcome, reason=reason, kind=kind)  # type: ignore[arg-type]

_TYPES = {
    EventKind.payment_failed: "payment.failed",
    EventKind.payment_succeeded: "payment.succeeded",
    EventKind.subscription_canceled: "subscription.canceled",
}


def _apply(store: Store, kind: EventKind, at: datetime, event_id: str) -> None:
    billing_event = BillingEvent(
        provider="fake", event_id=event_id, event_type=_TYPES[kind], kind=kind, occurred_at=at,
        subscription_id=SUB, customer_id=CUS,
    )  # fmt: skip
    store.apply_projection(billing_event, decide)


def _enter(store: Store, at: datetime = T0) -> None:
    """sub_1 fails to pay at `at`: past_due, anchored there."""
    _apply(store, EventKind.payment_failed, at, "evt_1")
    sub = store.get_subscription(SUB)
    assert sub is not None
    assert (sub.status, sub.dunning_campaign_started_at, sub.entitlement) == ("past_due", at, "full")


def _deliveries(store: Store) -> list[tuple[str, str, str]]:
    d = step_deliveries.c
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(d.step_key, d.state, d.claimed_by).order_by(d.step_key))]


def _ledger(store: Store) -> list[tuple[str, str]]:
    return [(e.type, e.step_key) for e in store.events(SUB)]


# --- claim_effect ----------------------------------------------------------------------
def test_claim_effect_claims_once_and_sent_stands_after_payment(store):
    _enter(store)
    claim = ("first_notice", "msg-1")
    assert claim_effect(store, SUB, T0, *claim, "tok-a", T0 + DAY) == EffectClaim("claimed", "tok-a")
    assert claim_effect(store, SUB, T0, *claim, "tok-b", T0 + DAY) == EffectClaim("claimed", "tok-a")
    assert _deliveries(store) == [("first_notice", "claimed", "tok-a")]

    store.mark_step_sent(SUB, CUS, T0, "first_notice", "msg-1", T0 + DAY)
    _apply(store, EventKind.payment_succeeded, T0 + 2 * DAY, "evt_2")
    assert store.get_subscription(SUB).status == "active"
    # the email went out: its record is the answer, not the (now stale) check
    assert claim_effect(store, SUB, T0, *claim, "tok-c", T0 + 3 * DAY) == EffectClaim("sent", "tok-a")
    # an effect not yet taken is stale now
    assert claim_effect(store, SUB, T0, "reminder", "msg-2", "tok-c", T0 + 3 * DAY).state == "stale"
    assert _deliveries(store) == [("first_notice", "sent", "tok-a")]


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        pytest.param(
            [(EventKind.payment_succeeded, T0 + DAY)],
            Stale("recovered", "subscription is active", "active"),
            id="paid",
        ),
        pytest.param(
            [(EventKind.subscription_canceled, T0 + DAY)],
            Stale("resolved", "subscription is canceled", "subscription_canceled"),
            id="canceled",
        ),
        pytest.param(
            [(EventKind.payment_succeeded, T0 + DAY), (EventKind.payment_failed, T0 + 5 * DAY)],
            Stale("resolved", "campaign anchor changed", "superseded"),
            id="anchor-moved",
        ),
    ],
)
def test_claim_effect_is_stale_and_claims_nothing(store, after, expected):
    _enter(store)
    for n, (kind, at) in enumerate(after, start=2):
        _apply(store, kind, at, f"evt_{n}")

    got = claim_effect(store, SUB, T0, "first_notice", "msg-1", "tok-a", T0 + 6 * DAY)
    assert got == EffectClaim("stale", "", expected)
    assert _deliveries(store) == []

    if expected.kind == "superseded":  # the new campaign's own effect is not stale
        new_anchor = store.get_subscription(SUB).dunning_campaign_started_at
        assert new_anchor == T0 + 5 * DAY
        got = claim_effect(store, SUB, new_anchor, "first_notice", "msg-9", "tok-b", T0 + 6 * DAY)
        assert got == EffectClaim("claimed", "tok-b")


# --- change_entitlement ----------------------------------------------------------------
def _change(level: str = "limited", previous: str = "full") -> EntitlementChange:
    return EntitlementChange(
        subscription_id=SUB, customer_id=CUS, campaign_started_at=T0, key=f"consequence:{level}",
        level=level, previous=previous, at=T0 + 3 * DAY,
    )  # fmt: skip


def test_change_entitlement_applies_once(store):
    _enter(store)
    assert change_entitlement(store, _change()) is None
    assert store.get_subscription(SUB).entitlement == "limited"
    [row] = store.events(SUB)
    assert (row.type, row.step_key, row.data, row.occurred_at) == (
        "dunning.consequence_changed", "consequence:limited", {"level": "limited", "previous": "full"}, T0 + 3 * DAY,
    )  # fmt: skip
    assert _deliveries(store) == [("consequence:limited", "sent", "")]

    before = store.get_subscription(SUB)
    assert change_entitlement(store, _change()) is None  # a retried activity
    assert store.get_subscription(SUB) == before
    assert _ledger(store) == [("dunning.consequence_changed", "consequence:limited")]
    assert len(_deliveries(store)) == 1


def test_change_entitlement_is_stale_after_payment(store):
    _enter(store)
    _apply(store, EventKind.payment_succeeded, T0 + DAY, "evt_2")
    assert change_entitlement(store, _change()) == Stale("recovered", "subscription is active", "active")
    assert store.get_subscription(SUB).entitlement == "full"
    assert _ledger(store) == []
    assert _deliveries(store) == []


# --- finish_campaign -------------------------------------------------------------------
HOUR = 3600.0  # a compressed day: one hour


def _exhausted() -> CampaignEnd:
    return CampaignEnd(
        subscription_id=SUB, customer_id=CUS, campaign_started_at=T0, outcome="exhausted",
        reason="grace period over", at=T0 + timedelta(hours=14, minutes=30), on_exhaustion="cancel",
        decline_class="soft", plan_id="plan_1",
    )  # fmt: skip


def _assert_exhausted_end(store: Store) -> None:
    sub = store.get_subscription(SUB)
    assert sub is not None
    assert (sub.status, sub.dunning_campaign_started_at, sub.entitlement) == ("canceled", None, "canceled")
    assert (sub.last_outcome, sub.last_campaign_started_at) == ("exhausted", T0)
    rows = {e.type: e for e in store.events(SUB, T0)}
    assert sorted(rows) == ["bad_debt.entered", "dunning.exhausted"]
    assert rows["dunning.exhausted"].data == {"reason": "grace period over"}
    assert rows["bad_debt.entered"].data == {"decline_class": "soft", "days_in_dunning": 14.5, "plan_id": "plan_1"}
    assert {e.occurred_at for e in rows.values()} == {T0 + timedelta(hours=14, minutes=30)}


def test_finish_exhausted_cancels_and_a_repeat_writes_nothing_more(store):
    _enter(store)
    assert finish_campaign(store, _exhausted(), HOUR) == ("canceled", "canceled")
    _assert_exhausted_end(store)

    sub, ledger = store.get_subscription(SUB), store.events(SUB)
    assert finish_campaign(store, _exhausted(), HOUR) == ("canceled", "canceled")
    assert store.get_subscription(SUB) == sub
    assert store.events(SUB) == ledger


def test_finish_recovered_after_the_payment_moved_the_projection(store):
    _enter(store)
    assert change_entitlement(store, _change()) is None
    _apply(store, EventKind.payment_succeeded, T0 + 4 * DAY, "evt_2")
    paid = store.get_subscription(SUB)
    assert (paid.status, paid.dunning_campaign_started_at, paid.entitlement) == ("active", None, "limited")

    end = CampaignEnd(
        subscription_id=SUB, customer_id=CUS, campaign_started_at=T0, outcome="recovered",
        reason="payment succeeded", at=T0 + 4 * DAY,
    )  # fmt: skip
    assert finish_campaign(store, end, HOUR) == ("active", "full")
    sub = store.get_subscription(SUB)
    assert (sub.status, sub.dunning_campaign_started_at, sub.last_event_at) == ("active", None, T0 + 4 * DAY)
    assert (sub.entitlement, sub.last_outcome, sub.last_campaign_started_at) == ("full", "recovered", T0)
    assert _ledger(store) == [("dunning.consequence_changed", "consequence:limited"), ("dunning.recovered", "")]


def test_finish_is_all_or_nothing_and_the_retry_completes_it(store):
    """Issue 7: a transient failure after a partial write left the entitlement wrong
    forever. The end is one transaction: a failure writes nothing, the retry everything."""
    _enter(store)
    failed: list[str] = []

    def fail_entitlement_once(conn, cursor, statement, parameters, context, executemany):
        if not failed and statement.lstrip().upper().startswith("UPDATE SUBSCRIPTIONS SET ENTITLEMENT"):
            failed.append(statement)
            raise RuntimeError("injected: connection lost during the entitlement write")

    event.listen(store.engine, "before_cursor_execute", fail_entitlement_once)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            finish_campaign(store, _exhausted(), HOUR)
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_entitlement_once)
    assert len(failed) == 1  # the failure happened where it was meant to

    sub = store.get_subscription(SUB)
    assert (sub.status, sub.dunning_campaign_started_at, sub.entitlement) == ("past_due", T0, "full")
    assert (sub.last_outcome, sub.last_campaign_started_at) == (None, None)
    assert store.events(SUB) == []

    assert finish_campaign(store, _exhausted(), HOUR) == ("canceled", "canceled")
    _assert_exhausted_end(store)


def test_an_old_campaigns_late_end_leaves_the_new_campaign_running(store):
    _enter(store)
    _apply(store, EventKind.payment_succeeded, T0 + DAY, "evt_2")
    _apply(store, EventKind.payment_failed, T0 + 5 * DAY, "evt_3")  # a new campaign, anchored here
    end = CampaignEnd(
        subscription_id=SUB, customer_id=CUS, campaign_started_at=T0, outcome="recovered",
        reason="payment succeeded", at=T0 + 6 * DAY,
    )  # fmt: skip
    assert finish_campaign(store, end, HOUR) == ("active", "full")
    sub = store.get_subscription(SUB)
    assert (sub.status, sub.dunning_campaign_started_at) == ("past_due", T0 + 5 * DAY)
    assert ("dunning.recovered", "") in _ledger(store)
    got = claim_effect(store, SUB, T0 + 5 * DAY, "first_notice", "msg-1", "tok-a", T0 + 6 * DAY)
    assert got == EffectClaim("claimed", "tok-a")


def test_delivery_counts_show_unconfirmed_claims_and_resends(store):
    at = T0
    _enter(store, at)
    assert store.delivery_counts() == {"unconfirmed": 0, "resends": 0}
    store.claim_step(SUB, at, "first_notice", "<m@x>", "a1", at)
    assert campaign_writes.count_send(store, SUB, at, "first_notice", "a1") == 1
    assert store.delivery_counts() == {"unconfirmed": 1, "resends": 0}
    taken = campaign_writes.claim_effect(store, SUB, at, "first_notice", "<m@x>", "a2", at, take_over=True)
    assert taken.state == "claimed" and taken.taken_over and taken.sends == 1
    assert campaign_writes.count_send(store, SUB, at, "first_notice", "a1") == 0  # the dead one lost it
    assert campaign_writes.count_send(store, SUB, at, "first_notice", "a2") == 2
    store.mark_step_sent(SUB, "cus", at, "first_notice", "<m@x>", at)
    assert store.delivery_counts() == {"unconfirmed": 0, "resends": 1}
    assert store.ledger_counts("dunning.step_sent", "dunning.action_failed") == {
        "dunning.step_sent": 1, "dunning.action_failed": 0,
    }  # fmt: skip
