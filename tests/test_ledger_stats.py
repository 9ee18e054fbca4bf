"""Ledger aggregates (dunning/store/ledger_stats.py) and the store gauges of /metrics
(starter.api_metrics.store_gauges), on SQLite and PostgreSQL.

Bad debt is entered and left the real way (an exhausted campaign's end; the pay-bad-debt
claim and its paid answer). `dunning.drift_detected` has no writer in the store yet, so
its rows go through the ledger's own `record_event`, with the data the sweep writes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from dunning.config import load_settings
from dunning.store import bad_debt
from dunning.store.ledger_stats import DRIFT, bad_debt_breakdown, drift_by_source, drift_counts
from dunning.store.store import Store
from starter.api_metrics import store_gauges
from tests.test_stuck import DAY, NOW, T0, claim, exhaust, past_due


def drift(store: Store, sub: str, source: str | None, fields: list[str], actions: list[str]) -> None:
    data = {"drift": fields, "actions": actions, **({"source": source} if source else {})}
    assert store.record_event(DRIFT, sub, f"cus_{sub}", T0, NOW, step_key=f"{source}:{NOW.timestamp():.0f}", data=data)


def drift_scenario(store: Store) -> None:
    drift(
        store,
        "sub_1",
        "sweep",
        ["projection.status", "projection.entitlement"],
        ["repair_projection", "set_entitlement"],
    )
    drift(store, "sub_2", "sweep", ["projection.entitlement"], ["set_entitlement"])
    drift(
        store, "sub_3", "support", ["campaign.outcome", "projection.entitlement"], ["end_campaign", "set_entitlement"]
    )
    drift(store, "sub_4", None, ["campaign.outcome", "campaign.outcome"], ["start_campaign"])  # named twice, no source
    # another type with the same data is not drift
    store.record_event(
        "dunning.step_sent", "sub_1", "cus_sub_1", T0, NOW, "first_notice", {"drift": ["projection.status"]}
    )


def test_drift_counts_each_field_of_a_row_once_and_by_source(store):
    assert (drift_counts(store), drift_by_source(store)) == ({}, {})
    drift_scenario(store)
    assert drift_counts(store) == {"campaign.outcome": 2, "projection.entitlement": 3, "projection.status": 1}
    assert drift_by_source(store) == {"support": 1, "sweep": 2, "unknown": 1}


def pay(store: Store, sub: str, entered: datetime, days: float, reason: str, amount: int) -> None:
    """Pay `sub`'s bad debt `days` after it was entered (14 days after `entered`)."""
    at = entered + timedelta(days=14 + days)
    attempt = bad_debt.claim(store, sub, f"key-{sub}-{at.timestamp():.0f}", reason, at)
    answer = bad_debt.finish_paid(store, attempt, reason, f"ch_{sub}", amount, at, DAY)
    assert answer.status == 200 and answer.body["days_in_bad_debt"] == days


def bad_debt_scenario(store: Store) -> None:
    """Six entries; four exits (stays 1, 2, 3, 4 days); sub_c never paid and sub_d fell
    back into bad debt after paying: two are in bad debt now."""
    for sub, decline_class, plan in [("sub_a", "soft", "plan_pro"), ("sub_b", "hard", "plan_pro"),
                                     ("sub_c", "soft", "plan_basic"), ("sub_d", "hard", "plan_basic"),
                                     ("sub_e", "soft", "plan_pro")]:  # fmt: skip
        exhaust(store, sub, past_due(store, sub), decline_class, plan)
    pay(store, "sub_a", T0, 2, "card_updated", 1500)
    pay(store, "sub_b", T0, 4, "paid_out_of_band", 4900)
    pay(store, "sub_d", T0, 1, "payment_succeeded", 900)
    pay(store, "sub_e", T0, 3, "card_updated", 1500)
    failed = bad_debt.claim(store, "sub_c", "key-c", "card_updated", T0 + timedelta(days=15))
    bad_debt.finish_failed(store, failed, 402, {"error": "card_declined"}, T0 + timedelta(days=15))
    again = past_due(store, "sub_d", T0 + timedelta(days=17))  # a new campaign after the payment
    exhaust(store, "sub_d", again, "soft", "plan_basic")


def test_bad_debt_breakdown(store):
    empty = bad_debt_breakdown(store)
    assert empty["in_bad_debt"] == 0 and empty["exited"]["stay_days"] == {"count": 0, "p50": None, "max": None}
    bad_debt_scenario(store)
    assert bad_debt_breakdown(store) == {
        "entered": {
            "total": 6,
            "by_decline_class": {"hard": 2, "soft": 4},
            "by_plan": {"plan_basic": 3, "plan_pro": 3},
        },
        "exited": {
            "total": 4,
            "by_how": {"paid": 4},
            "by_reason": {"card_updated": 2, "paid_out_of_band": 1, "payment_succeeded": 1},
            "stay_days": {"count": 4, "p50": 2.5, "max": 4.0},
        },
        "in_bad_debt": 2,  # sub_c, and sub_d again
    }


def test_stay_median_of_an_odd_count(store):
    for sub, days in [("sub_x", 1), ("sub_y", 7), ("sub_z", 2)]:
        exhaust(store, sub, past_due(store, sub))
        pay(store, sub, T0, days, "card_updated", 100)
    assert bad_debt_breakdown(store)["exited"]["stay_days"] == {"count": 3, "p50": 2.0, "max": 7.0}


def test_store_gauges_are_json_and_use_the_recompute_window(store, tmp_path: Path):
    settings = load_settings(home=tmp_path)  # the store is the fixture's; only the window is read
    drift_scenario(store)
    bad_debt_scenario(store)
    past_due(store, "sub_retry")
    claim(store, "sub_retry", "retry@3d", NOW - timedelta(minutes=20))
    gauges = store_gauges(store, settings, NOW)  # the default window: 30 minutes
    assert json.loads(json.dumps(gauges)) == gauges
    assert gauges == {
        "dunning.stuck.payments_in_flight": 0,
        "dunning.stuck.unconfirmed_steps": 0,
        "dunning.stuck.parked_events": 0,
        "dunning.drift_detected": {"campaign.outcome": 2, "projection.entitlement": 3, "projection.status": 1},
        "dunning.drift_detected.by_source": {"support": 1, "sweep": 2, "unknown": 1},
        "dunning.bad_debt.breakdown": bad_debt_breakdown(store),
    }
    ten_minutes = settings.recompute.model_copy(update={"in_flight_window_seconds": 600})
    narrow = store_gauges(store, settings.model_copy(update={"recompute": ten_minutes}), NOW)
    assert narrow["dunning.stuck.payments_in_flight"] == 1
