"""Which end wins when several reach a campaign close together (dunning.ending.winner):
a table of the cases the issue names, and properties over any mix and order."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dunning.ending import EXHAUSTED, PAID, RESOLVED, Claim, end_state, superseded, winner

T = datetime(2026, 5, 1, tzinfo=UTC)
S = timedelta(seconds=1)

paid = Claim(PAID, T, "paid by bank transfer")
retry_ok = Claim(PAID, T + S, "payment retry retry@3d succeeded")
inferred = Claim(PAID, T - S, "superseded: subscription is active", inferred=True)
voided = Claim(RESOLVED, T, "invoice voided", "invoice_voided")
canceled = Claim(RESOLVED, T + S, "subscription canceled", "subscription_canceled")
exhausted = Claim(EXHAUSTED, T, "grace period ended without payment")

TABLE = [
    # (claims, terminal action ran, outcome, reason)
    ([paid], False, "recovered", "paid by bank transfer"),
    ([paid, exhausted], False, "recovered", "paid by bank transfer"),
    ([paid, exhausted], True, "recovered_after_cancel", "paid by bank transfer"),
    ([exhausted], True, "exhausted", "grace period ended without payment"),
    ([exhausted], False, "exhausted", "grace period ended without payment"),  # on_exhaustion = none
    ([voided, exhausted], False, "resolved", "invoice voided"),
    ([voided, exhausted], True, "exhausted", "grace period ended without payment"),  # the cancel stands
    ([voided, paid], False, "recovered", "paid by bank transfer"),  # paid vs voided: the payment
    ([retry_ok, paid], False, "recovered", "paid by bank transfer"),  # earliest payment's words
    ([inferred, paid], False, "recovered", "paid by bank transfer"),  # a message's words over an inference
    ([canceled, voided], False, "resolved", "invoice voided"),
    ([], False, None, None),
]


@pytest.mark.parametrize("claims,ran,outcome,reason", TABLE)
def test_which_end_wins(claims, ran, outcome, reason):
    end = winner(claims, ran)
    assert (end.outcome if end else None, end.reason if end else None) == (outcome, reason)


claims_st = st.lists(
    st.builds(
        Claim,
        kind=st.sampled_from([PAID, RESOLVED, EXHAUSTED]),
        at=st.integers(0, 5).map(lambda s: T + s * S),
        reason=st.sampled_from(["a", "b", "c"]),
        resolution=st.sampled_from(["", "invoice_voided", "subscription_canceled"]),
        inferred=st.booleans(),
    ),
    max_size=6,
)


@given(claims=claims_st, ran=st.booleans(), data=st.data())
def test_the_order_of_arrival_never_changes_the_end(claims, ran, data):
    shuffled = data.draw(st.permutations(claims))
    assert winner(shuffled, ran) == winner(claims, ran)


@given(claims=claims_st, ran=st.booleans())
def test_a_payment_is_never_lost_nor_reported_as_plain_recovered_after_the_cancel(claims, ran):
    end = winner(claims, ran)
    if any(c.kind == PAID for c in claims):
        assert end is not None and end.outcome == ("recovered_after_cancel" if ran else "recovered")
    elif end is not None:
        assert end.outcome in ("resolved", "exhausted")


def test_end_state_never_reads_words():
    assert end_state("resolved", "subscription_canceled", "cancel") == ("canceled", "canceled")
    assert end_state("resolved", "invoice_voided", "cancel") == ("active", "full")
    assert end_state("resolved", "invoice_voided", "cancel") == end_state("resolved", "invoice_voided", "none")
    assert end_state("exhausted", "", "mark_unpaid") == ("unpaid", "canceled")
    assert end_state("recovered_after_cancel", "", "cancel") == ("canceled", "canceled")


def test_superseded_names_what_the_projection_says():
    assert superseded("past_due", T, T) is None
    assert superseded("active", None, T).outcome == "recovered"  # type: ignore[union-attr]
    assert superseded("canceled", None, T).kind == "subscription_canceled"  # type: ignore[union-attr]
    assert superseded("past_due", T + S, T).kind == "superseded"  # type: ignore[union-attr]
    assert superseded(None, None, T).outcome == "resolved"  # type: ignore[union-attr]
