from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dunning.contracts import CampaignPlan, StepSpec
from dunning.journey import EXHAUST, Done, Due, boundary, next_action, next_step

ANCHOR = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
DAY = 86400.0
DEFAULT = [
    StepSpec(after_days=0, key="first_notice", template="first_notice"),
    StepSpec(after_days=5, key="reminder", template="reminder"),
    StepSpec(after_days=12, key="final_notice", template="final_notice"),
]


@st.composite
def step_lists(draw):
    gaps = draw(st.lists(st.integers(min_value=1, max_value=30 * 24), min_size=1, max_size=8))
    start = draw(st.integers(min_value=0, max_value=48))
    hours, out = start, []
    for i, gap in enumerate(gaps):
        out.append(StepSpec(after_days=hours / 24, key=f"s{i}", template="first_notice"))
        hours += gap
    return out


times = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
)
day_seconds = st.sampled_from([1.0, 2.0, 60.0, 3600.0, DAY])


def test_default_cadence_from_anchor():
    r = next_step(DEFAULT, ANCHOR, ANCHOR, DAY)
    assert r == Due("first_notice", "email", ANCHOR, timedelta(0), (), "first_notice")
    r = next_step(DEFAULT, ANCHOR, ANCHOR + timedelta(seconds=3), DAY, {"first_notice"})
    assert r.key == "reminder" and r.at == ANCHOR + timedelta(days=5)
    assert r.delay == timedelta(days=5, seconds=-3)


def test_late_start_sends_latest_due_step_and_skips_the_rest():
    r = next_step(DEFAULT, ANCHOR, ANCHOR + timedelta(days=6), DAY)
    assert r.key == "reminder" and r.delay == timedelta(0) and r.skipped == ("first_notice",)


def test_anchor_in_the_future_never_gives_negative_delay():
    r = next_step(DEFAULT, ANCHOR, ANCHOR - timedelta(hours=1), DAY)
    assert r.key == "first_notice" and r.delay == timedelta(hours=1)


def test_exhaust_after_last_step_then_done():
    plan = CampaignPlan(steps=DEFAULT, grace_days=14, day_seconds=DAY)
    handled = {"first_notice", "reminder", "final_notice"}
    r = next_action(plan, ANCHOR, ANCHOR + timedelta(days=12), handled)
    assert r.kind == EXHAUST and r.at == ANCHOR + timedelta(days=14) and r.delay == timedelta(days=2)
    assert next_action(plan, ANCHOR, ANCHOR + timedelta(days=20), handled | {EXHAUST}) == Done()


@given(step_lists(), times, times, day_seconds, st.data())
def test_total_and_delay_never_negative(steps, anchor, now, ds, data):
    handled_upto = data.draw(st.integers(min_value=-1, max_value=len(steps) - 1))
    handled = {s.key for s in steps[: handled_upto + 1]}
    r = next_step(steps, anchor, now, ds, handled)
    if handled_upto == len(steps) - 1:
        assert r == Done()  # done exactly when nothing is left
        return
    assert isinstance(r, Due)
    assert r.delay >= timedelta(0)
    assert r.key not in handled
    pending = steps[handled_upto + 1 :]
    # delay is zero exactly when a pending boundary has been reached
    reached = any(boundary(anchor, s.after_days, ds) <= now for s in pending)
    assert (r.delay == timedelta(0)) == reached
    if not reached:
        assert now + r.delay == r.at == boundary(anchor, pending[0].after_days, ds)


@given(step_lists(), times, day_seconds)
def test_delay_is_zero_exactly_on_a_boundary(steps, anchor, ds):
    for i, s in enumerate(steps):
        handled = {x.key for x in steps[:i]}
        on = boundary(anchor, s.after_days, ds)
        assert next_step(steps, anchor, on, ds, handled) == Due(s.key, "email", on, timedelta(0), (), s.template)
        before = next_step(steps, anchor, on - timedelta(microseconds=1), ds, handled)
        assert before.key == s.key and before.delay == timedelta(microseconds=1)


@given(step_lists(), times, day_seconds)
def test_walking_from_the_anchor_visits_every_step_once_in_order(steps, anchor, ds):
    now, handled, visited = anchor, set(), []
    plan = CampaignPlan(steps=steps, grace_days=steps[-1].after_days + 1, day_seconds=ds)
    while not isinstance(r := next_action(plan, anchor, now, handled), Done):
        assert r.skipped == ()
        now += r.delay
        assert now == r.at
        handled.add(r.key)
        visited.append(r.key)
    assert visited == [s.key for s in steps] + [EXHAUST]


@given(step_lists(), times, st.integers(min_value=0, max_value=400 * 24), day_seconds)
def test_walking_from_a_late_start_never_repeats_or_reorders(steps, anchor, late_hours, ds):
    now = anchor + timedelta(hours=late_hours)
    handled, visited = set(), []
    while isinstance(r := next_step(steps, anchor, now, ds, handled), Due):
        now += r.delay
        handled.update(r.skipped)
        handled.add(r.key)
        visited.extend([*r.skipped, r.key])
    assert visited == [s.key for s in steps]


# --- catch-up rules after an outage -------------------------------------------------------
from dunning import journey  # noqa: E402

A = datetime(2026, 1, 1, tzinfo=UTC)
CATCH_PLAN = CampaignPlan(
    steps=[StepSpec(after_days=0, key="first_notice", template="first_notice"),
           StepSpec(after_days=5, key="reminder", template="reminder"),
           StepSpec(after_days=12, key="final_notice", template="final_notice")],
    grace_days=14, day_seconds=86400,
)  # fmt: skip


def _email(key: str, days: float) -> Due:
    return Due(key, "email", boundary(A, days, 86400), timedelta(0), (), key)


@pytest.mark.parametrize(
    ("key", "due_day", "now_day", "expected"),
    [
        ("final_notice", 12, 12, None),  # on time: never skipped
        ("final_notice", 12, 13.5, None),  # late; half a day left = half of min(1 day, 2 days)
        ("final_notice", 12, 13.6, journey.SKIP_NOTICE_TOO_SHORT),  # under 12 hours before the cancel
        ("final_notice", 12, 14, journey.SKIP_DEADLINE_PASSED),
        ("reminder", 5, 11, None),  # 3 days left
        ("first_notice", 0, 13.2, None),
        ("first_notice", 0, 13.7, journey.SKIP_NOTICE_TOO_SHORT),
        ("final_notice", 14, 14, None),  # a step planned at the deadline, on time
        ("final_notice", 14, 14.001, None),  # ... a timer is never exact
        ("final_notice", 2, 2.00001, None),  # one day of notice, a few ms late (grace_days 3)
    ],
)
def test_an_overdue_email_is_skipped_only_when_it_would_tell_the_customer_too_little_time(
    key, due_day, now_day, expected
):
    due = _email(key, due_day)
    plan = CATCH_PLAN if due_day != 2 else CATCH_PLAN.model_copy(update={"grace_days": 3})
    assert journey.skip_reason(due, boundary(A, now_day, 86400), plan, A) == expected


def test_retries_and_rungs_are_never_skipped_by_the_notice_rule():
    late = boundary(A, 13.9, 86400)
    for due in (Due("retry@7d", "retry", boundary(A, 7, 86400), timedelta(0)),
                Due("level:suspended@10d", "consequence", boundary(A, 10, 86400), timedelta(0), (), "suspended")):
        assert journey.skip_reason(due, late, CATCH_PLAN, A) is None


# --- the engine's own lateness (a busy worker) is never an outage --------------------------
FAST = CATCH_PLAN.model_copy(update={"day_seconds": 1.0, "late_tolerance_seconds": 30})


@pytest.mark.parametrize("late_seconds", [0.5, 6, 29])
def test_lateness_within_the_tolerance_skips_nothing_even_on_one_second_days(late_seconds):
    """A saturated worker, 1-second days: the final notice due on day 12 runs late by
    `late_seconds` (past the grace period end at 29 s). Within the tolerance it is sent."""
    due = Due("final_notice", "email", boundary(A, 12, 1.0), timedelta(0), (), "final_notice")
    now = boundary(A, 12, 1.0) + timedelta(seconds=late_seconds)
    assert journey.skip_reason(due, now, FAST, A) is None
    untolerant = journey.skip_reason(due, now, FAST.model_copy(update={"late_tolerance_seconds": 0}), A)
    assert untolerant == (None if late_seconds < 1.5 else journey.SKIP_DEADLINE_PASSED)


def test_a_later_step_supersedes_only_when_it_was_due_beyond_the_tolerance():
    """After the first notice a busy engine comes back 7 s (7 days) late: the reminder, due
    at 5 s, fell due while it was busy, so it is sent, not superseded by the final notice.
    An outage beyond the tolerance (40 s) supersedes as before."""
    handled = {"first_notice"}
    busy = boundary(A, 12.5, 1.0)  # final notice (12 s) due 0.5 s ago, reminder 7.5 s ago
    emails = FAST  # no retries, no ladder: the email lane alone
    got = next_action(emails, A, busy, handled)
    assert isinstance(got, Due) and (got.key, got.skipped) == ("final_notice", ("reminder",))  # the raw clock
    got = next_action(emails, A, journey.planning_now(emails, busy), handled)
    assert isinstance(got, Due) and (got.key, got.skipped) == ("reminder", ())
    outage = boundary(A, 12, 1.0) + timedelta(seconds=40)
    got = next_action(emails, A, journey.planning_now(emails, outage), handled)
    assert isinstance(got, Due) and (got.key, got.skipped) == ("final_notice", ("reminder",))
