"""The merged timeline (retries, consequences, emails) and the consequence ladder."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from dunning import consequences
from dunning.config import default_ladder, default_retry_policies
from dunning.contracts import CampaignPlan, ConsequenceRule, RetryPolicy, StepSpec
from dunning.journey import EXHAUST, Done, Situation, lanes, next_action

ANCHOR = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
STEPS = [
    StepSpec(after_days=0, key="first_notice", template="first_notice"),
    StepSpec(after_days=5, key="reminder", template="reminder"),
    StepSpec(after_days=12, key="final_notice", template="final_notice"),
]


def plan(**kw) -> CampaignPlan:
    base = dict(
        steps=STEPS,
        grace_days=14,
        day_seconds=86400,
        retries_mode="engine",
        retry_policies=default_retry_policies(),
        ladder=default_ladder(),
    )
    return CampaignPlan(**{**base, **kw})


def walk(p, situation, now=ANCHOR, handled=None):
    handled, seen = set(handled or ()), []
    while not isinstance(d := next_action(p, ANCHOR, now, handled, situation), Done):
        assert d.delay >= timedelta(0)
        now += d.delay
        handled.update(d.skipped)
        handled.add(d.key)
        seen.append((round((now - ANCHOR) / DAY, 3), d.kind, d.detail or d.key))
    return seen


def test_soft_decline_default_timeline():
    assert walk(plan(), Situation(decline_class="soft")) == [
        (0, "email", "first_notice"),
        (1, "retry", "retry@1d"),
        (3, "retry", "retry@3d"),
        (5, "retry", "retry@5d"),
        (5, "email", "reminder"),
        (7, "retry", "retry@7d"),
        (7, "consequence", "limited"),
        (10, "consequence", "suspended"),
        (12, "email", "final_notice"),
        (14, EXHAUST, EXHAUST),
    ]


def test_hard_decline_sends_update_card_email_at_once_and_never_retries_blindly():
    seen = walk(plan(), Situation(decline_class="hard"))
    assert seen[0] == (0, "email", "update_payment_method")
    assert not [s for s in seen if s[1] == "retry"]


def test_payment_method_update_brings_one_retry_at_once():
    at = ANCHOR + 3 * DAY
    d = next_action(plan(), ANCHOR, at, {"first_notice", "class:update_payment_method"}, Situation("hard", None, at))
    assert d.kind == "retry" and d.delay == timedelta(0)
    assert next_action(plan(), ANCHOR, at, {"first_notice", "class:update_payment_method", d.key}, Situation("hard", None, at)).kind != "retry"


def test_provider_driven_retries_are_never_scheduled_by_the_engine():
    assert not [s for s in walk(plan(retries_mode="provider"), Situation("soft")) if s[1] == "retry"]


def test_ladder_first_match_wins_with_class_and_amount_conditions():
    ladder = [
        ConsequenceRule(level="suspended", min_days=3, decline_class="hard"),
        ConsequenceRule(level="limited", min_days=0, min_amount_due=10_000),
        ConsequenceRule(level="full", min_days=0),
    ]
    assert consequences.level_at(ladder, 4, "hard", 0) == "suspended"
    assert consequences.level_at(ladder, 4, "soft", 0) == "full"
    assert consequences.level_at(ladder, 1, "hard", 20_000) == "limited"
    assert consequences.level_at(ladder, 1, "soft", None) == "full"
    assert consequences.changes(ladder, "hard", 20_000, 14) == [(0, "limited"), (3, "suspended")]
    assert consequences.changes(default_ladder(), "soft", None, 14) == [(7, "limited"), (10, "suspended")]


days = st.floats(min_value=0, max_value=30, allow_nan=False).map(lambda x: round(x, 2))


@st.composite
def plans(draw):
    n = draw(st.integers(1, 5))
    offs = sorted(set(draw(st.lists(days, min_size=n, max_size=n))))
    steps = [StepSpec(after_days=d, key=f"s{i}", template="first_notice") for i, d in enumerate(offs)]
    grace = offs[-1] + draw(days)
    pol = {
        c: RetryPolicy(days=sorted({d for d in draw(st.lists(days, max_size=4)) if d <= grace}), email=draw(st.sampled_from([None, "first_notice"])))
        for c in ("soft", "hard", "action_required", "unknown")
    }
    rungs = draw(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), days, st.sampled_from([None, "soft", "hard"]), st.sampled_from([None, 500])), max_size=4))
    ladder = [ConsequenceRule(level=lv, min_days=m, decline_class=c, min_amount_due=a) for lv, m, c, a in rungs]
    ladder.append(ConsequenceRule(level="full"))
    return CampaignPlan(
        steps=steps, grace_days=grace, day_seconds=draw(st.sampled_from([1.0, 86400.0])),
        retries_mode=draw(st.sampled_from(["engine", "provider", "off"])), retry_policies=pol, ladder=ladder,
    )


situations = st.builds(
    Situation,
    decline_class=st.sampled_from(["soft", "hard", "action_required", "unknown"]),
    amount_due=st.sampled_from([None, 100, 1000]),
)


@given(plans(), situations, st.floats(min_value=-2, max_value=40))
def test_merged_timeline_never_in_the_past_never_twice_done_when_nothing_left(p, situation, start_days):
    now = ANCHOR + timedelta(seconds=start_days * p.day_seconds)
    handled, keys, t = set(), [], now
    while not isinstance(d := next_action(p, ANCHOR, t, handled, situation), Done):
        assert d.delay >= timedelta(0) and t + d.delay >= t
        assert d.key not in handled and not set(d.skipped) & handled
        t += d.delay
        keys += [*d.skipped, d.key]
        handled.update(d.skipped)
        handled.add(d.key)
        assert len(keys) < 100
    assert len(keys) == len(set(keys))  # never twice
    every = {d.key for lane in lanes(p, ANCHOR, situation) for d in lane} | {EXHAUST}
    assert set(keys) == every  # done exactly when nothing is left


@given(plans(), situations)
def test_walking_from_the_anchor_skips_nothing_and_acts_on_time(p, situation):
    handled, t = set(), ANCHOR
    while not isinstance(d := next_action(p, ANCHOR, t, handled, situation), Done):
        t += d.delay
        assert d.skipped == () and d.at == t  # each action exactly at its own time
        handled.add(d.key)


def test_observe_a_later_billing_event():
    from dunning.contracts import BillingEvent, EventKind
    from dunning.journey import observe

    at = ANCHOR + 2 * DAY

    def event(kind, **kw):
        return BillingEvent(provider="fake", event_id="e", event_type=kind.value, kind=kind, occurred_at=at, **kw)

    s = Situation("soft")
    failed = observe(s, event(EventKind.payment_failed, decline_class="hard", amount_due=900))
    assert failed == Situation("hard", 900, None, at)
    assert observe(failed, event(EventKind.payment_method_updated)).method_updated_at == at
    older = BillingEvent(provider="fake", event_id="o", event_type="payment_failed", kind=EventKind.payment_failed, occurred_at=ANCHOR)
    assert observe(failed, older).last_retry_at == at  # never moves back
    assert observe(s, event(EventKind.invoice_voided)) == s
