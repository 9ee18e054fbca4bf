"""Recovery analytics (dunning/analytics.py, dunning/store/ledger_analytics.py) on SQLite
and PostgreSQL, from a ledger written by the engine's own writers: campaigns begin with
`begin_campaign` and end with `finish_campaign`, bad debt is paid through the
pay-bad-debt claim; only the noise rows go through `record_event`.

The period is November 2026 as four ISO weeks: [Mon 2 Nov, Mon 30 Nov), W45..W48."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dunning.analytics import LedgerRow, iso_week, recovery_path, report, weeks
from dunning.contracts import BillingEvent, CampaignEnd, CampaignInput, EventKind
from dunning.projection import decide
from dunning.store import bad_debt
from dunning.store.campaign_writes import begin_campaign, finish_campaign
from dunning.store.ledger_analytics import recovered_vs_lost
from dunning.store.store import Store

DAY = 86400.0
SINCE = datetime(2026, 11, 2, tzinfo=UTC)
UNTIL = datetime(2026, 11, 30, tzinfo=UTC)


def at(day: int, hour: float = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, tzinfo=UTC) + timedelta(hours=hour)


def begin(store: Store, sub: str, failed: datetime, provider: str = "stripe", amount: int | None = None,
          currency: str | None = None, plan: str | None = "plan_pro", decline: str | None = "soft",
          shadow: bool = False, projection: bool = False) -> datetime:  # fmt: skip
    """A failed payment at `failed` and its campaign's first ledger row (`projection`:
    the subscription row too, as the webhook path writes it, for the bad-debt path)."""
    if projection:
        store.apply_projection(
            BillingEvent(provider=provider, event_id=f"evt_{sub}", event_type="invoice.payment_failed",
                         kind=EventKind.payment_failed, occurred_at=failed, subscription_id=sub,
                         customer_id=f"cus_{sub}"),
            decide,
        )  # fmt: skip
    inp = CampaignInput(subscription_id=sub, customer_id=f"cus_{sub}", failed_at=failed, provider=provider,
                        amount_due=amount, currency=currency, plan_id=plan, decline_class=decline)  # fmt: skip
    begin_campaign(store, inp, failed, outbound=False, shadow=shadow)
    return failed


def end(store: Store, sub: str, started: datetime, outcome: str, reason: str, days: float, **kw: object) -> None:
    finish_campaign(store, CampaignEnd(subscription_id=sub, customer_id=f"cus_{sub}", campaign_started_at=started,
                                       outcome=outcome, reason=reason, at=started + timedelta(days=days),
                                       on_exhaustion="cancel", **kw), DAY)  # fmt: skip


def pay_bad_debt(store: Store, sub: str, when: datetime, amount: int) -> None:
    attempt = bad_debt.claim(store, sub, f"key-{sub}", "card_updated", when)
    assert bad_debt.finish_paid(store, attempt, "card_updated", f"ch_{sub}", amount, when, DAY).status == 200


def scenario(store: Store) -> None:
    """Nine campaigns in the period (five recovered, two lost, two in progress), three
    outside it, one shadow; bad debt entered twice and left twice in the period."""
    a = begin(store, "sub_a", SINCE, amount=2000, currency="USD")  # exactly at `since`: in
    end(store, "sub_a", a, "recovered", "payment retry retry@3d succeeded", 3.5)
    b = begin(store, "sub_b", at(3, 8), amount=5000, currency="usd", plan="plan_team")
    end(store, "sub_b", b, "recovered", "card_updated", 1.2)
    c = begin(store, "sub_c", at(10, 9), "braintree", 1500, "eur", decline="hard")
    end(store, "sub_c", c, "exhausted", "grace period ended without payment", 14, decline_class="hard")
    end(store, "sub_c", c, "recovered_after_cancel", "payment_succeeded: braintree charged evt_9", 16)
    d = begin(store, "sub_d", at(12, 6), amount=3000, currency="usd", decline="hard", projection=True)
    end(store, "sub_d", d, "exhausted", "grace period ended without payment", 14, decline_class="hard")
    pay_bad_debt(store, "sub_d", at(28, 6), 3000)
    e = begin(store, "sub_e", at(17, 12))  # no amount known
    end(store, "sub_e", e, "resolved", "invoice_voided: stripe invoice.voided evt_5", 2, kind="invoice_voided")
    begin(store, "sub_f", at(18), amount=990, currency="gbp", plan="plan_basic", decline="action_required")
    g = begin(store, "sub_g", at(25, 10), amount=2500, currency="usd")
    end(store, "sub_g", g, "recovered", "superseded: the subscription is active", 0.5)
    begin(store, "sub_h", at(27), "braintree", 1500, "eur", decline=None)
    late = begin(store, "sub_late", at(29, 10), amount=4000, currency="usd", plan="plan_team", decline="hard")
    end(store, "sub_late", late, "recovered", "invoice_paid", 4.5)  # ends after `until`: still counts
    # noise: other ledger rows of these campaigns
    store.record_event("dunning.retry_attempted", "sub_a", "cus_sub_a", a, a + timedelta(days=3), "retry@3d",
                       {"status": "failed"})  # fmt: skip
    store.record_event("dunning.step_sent", "sub_f", "cus_sub_f", at(18), at(18, 1), "first_notice", {})
    # outside the period or shadow: never counted
    s = begin(store, "sub_shadow", at(19), amount=9999, currency="usd", shadow=True)
    end(store, "sub_shadow", s, "recovered", "card_updated", 1, shadow=True)
    x = begin(store, "sub_before", SINCE - timedelta(seconds=1), amount=100, currency="usd")
    end(store, "sub_before", x, "recovered", "card_updated", 1)
    y = begin(store, "sub_until", UNTIL, amount=100, currency="usd")  # exactly at `until`: out
    end(store, "sub_until", y, "exhausted", "grace period ended without payment", 0.5)
    # a bad debt entered in October and paid in November: its exit counts, in its currency
    old = begin(store, "sub_old", at(1, month=10), "braintree", 700, "eur", decline="hard", projection=True)
    end(store, "sub_old", old, "exhausted", "grace period ended without payment", 14, decline_class="hard")
    pay_bad_debt(store, "sub_old", at(5), 700)


def test_recovered_vs_lost_from_the_ledger(store):
    scenario(store)
    r = recovered_vs_lost(store, SINCE, UNTIL)
    assert (r.campaigns, r.recovered, r.lost, r.exhausted, r.resolved, r.in_progress) == (9, 5, 2, 1, 1, 2)
    assert r.recovery_rate == 0.5556 and r.amount_unknown == 1
    assert r.failed_amount == {"usd": 16500, "eur": 3000, "gbp": 990}
    assert r.recovered_amount == {"usd": 13500, "eur": 1500}
    assert r.lost_amount == {"usd": 3000}  # sub_e's amount is unknown
    assert r.in_progress_amount == {"gbp": 990, "eur": 1500}
    assert r.amount_rate == {"usd": 0.8182, "eur": 0.5, "gbp": 0.0}
    assert {p.path: p.recovered for p in r.by_path} == {
        "engine_retry": 1, "provider_retry": 1, "card_update": 1, "payment_service": 1, "inferred": 1, "other": 0,
    }  # fmt: skip
    assert sum(p.rate or 0 for p in r.by_path) == pytest.approx(r.recovery_rate, abs=1e-3)
    assert r.by_path[0].amount == {"usd": 2000} and r.by_path[1].amount == {"eur": 1500}
    weeks_ = {g.key: (g.campaigns, g.recovered, g.lost, g.in_progress, g.rate) for g in r.by_cohort_week}
    assert weeks_ == {"2026-W45": (2, 2, 0, 0, 1.0), "2026-W46": (2, 1, 1, 0, 0.5), "2026-W47": (2, 0, 1, 1, 0.0),
                      "2026-W48": (3, 2, 0, 1, 0.6667)}  # fmt: skip
    assert {g.key: (g.campaigns, g.rate) for g in r.by_provider} == {"braintree": (2, 0.5), "stripe": (7, 0.5714)}
    assert {g.key: (g.campaigns, g.recovered, g.rate) for g in r.by_decline_class} == {
        "action_required": (1, 0, 0.0), "hard": (3, 2, 0.6667), "soft": (4, 3, 0.75), "unknown": (1, 0, 0.0),
    }  # fmt: skip
    assert {g.key: (g.campaigns, g.rate) for g in r.by_plan} == {
        "plan_basic": (1, 0.0), "plan_pro": (6, 0.5), "plan_team": (2, 1.0),
    }  # fmt: skip
    assert {b.label: b.count for b in r.days_to_recovery if b.count} == {"0-1d": 1, "1-2d": 1, "3-5d": 2, "14-21d": 1}
    assert r.median_days_to_recovery == 3.5
    bd = r.bad_debt
    assert (bd.entered, bd.entered_amount, bd.entered_by_decline_class) == (2, {"eur": 1500, "usd": 3000}, {"hard": 2})
    assert (bd.exited, bd.exited_by_how, bd.exited_amount) == (2, {"paid": 2}, {"usd": 3000, "eur": 700})
    dumped = r.model_dump(mode="json")
    assert dumped["since"] == "2026-11-02T00:00:00Z" and dumped["by_cohort_week"][0]["key"] == "2026-W45"


def test_period_boundaries_and_an_empty_period(store):
    scenario(store)
    just_before = recovered_vs_lost(store, SINCE - timedelta(seconds=1), SINCE)
    assert (just_before.campaigns, just_before.recovered, just_before.recovery_rate) == (1, 1, 1.0)
    at_until = recovered_vs_lost(store, UNTIL, UNTIL + timedelta(days=1))
    assert (at_until.campaigns, at_until.lost, at_until.exhausted, at_until.recovery_rate) == (1, 1, 1, 0.0)
    empty = recovered_vs_lost(store, at(1, month=6), at(2, month=6))
    assert (empty.campaigns, empty.recovery_rate, empty.failed_amount, empty.median_days_to_recovery) == (
        0, None, {}, None,
    )  # fmt: skip
    assert [g.key for g in empty.by_cohort_week] == ["2026-W23"]
    with pytest.raises(ValueError, match="before"):
        recovered_vs_lost(store, UNTIL, SINCE)
    with pytest.raises(ValueError, match="timezone"):
        recovered_vs_lost(store, SINCE.replace(tzinfo=None), UNTIL)


@pytest.mark.parametrize(
    ("reason", "path"),
    [
        ("payment retry retry@3d succeeded", "engine_retry"),
        ("card_updated", "card_update"),
        ("retry_succeeded", "payment_service"),
        ("payment_succeeded", "payment_service"),
        ("paid_out_of_band", "payment_service"),
        ("invoice_paid", "payment_service"),
        ("manual_adjustment", "payment_service"),
        ("payment_succeeded: stripe invoice.paid evt_1", "provider_retry"),
        ("payment_recovered: fake payment_service.payment_recovered svc_1", "provider_retry"),
        ("superseded: the subscription is active", "inferred"),
        ("payment recovered", "other"),
        ("payment after the terminal action", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_recovery_path(reason, path):
    assert recovery_path(reason) == path


def test_pure_report_shadow_and_outcome_precedence():
    """Without a database: a shadow campaign is not one; a recovery wins over an earlier
    exhaustion; end rows of campaigns outside the cohort are ignored; weeks are ISO."""
    t = SINCE + timedelta(days=1)

    def row(type_: str, sub: str, occurred: datetime, **data: object) -> LedgerRow:
        return LedgerRow(type_, sub, t, occurred, data)

    rows = [
        row("dunning.campaign_started", "s1", t, provider="fake", amount_due=500, currency="eur"),
        row("dunning.exhausted", "s1", t + timedelta(days=14), reason="grace period ended without payment"),
        row("dunning.recovered_after_cancel", "s1", t + timedelta(days=20), reason="payment after the terminal action"),
        row("dunning.campaign_started", "s2", t, provider="fake", mode="shadow", amount_due=900, currency="eur"),
        row("dunning.recovered", "s2", t + timedelta(days=1), reason="card_updated"),
        row("dunning.recovered", "s3", t + timedelta(days=1), reason="card_updated"),  # no campaign_started row
    ]
    r = report(rows, [], SINCE, UNTIL)
    assert (r.campaigns, r.recovered, r.lost, r.recovered_amount) == (1, 1, 0, {"eur": 500})
    assert [p.path for p in r.by_path if p.recovered] == ["other"]
    assert [b.label for b in r.days_to_recovery if b.count] == ["14-21d"]
    assert weeks(datetime(2026, 12, 28, tzinfo=UTC), datetime(2027, 1, 5, tzinfo=UTC)) == ["2026-W53", "2027-W01"]
    assert iso_week(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-W53"
    with pytest.raises(ValueError):
        report(rows, [], UNTIL, SINCE)
