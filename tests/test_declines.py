"""dunning.declines: every documented row, the fallbacks, and the decisions that matter."""

from __future__ import annotations

import pytest

from dunning.declines import BRAINTREE_DECLINES, RESPONSE_TYPES, STRIPE_DECLINES, classify

CLASSES = {"hard", "soft", "action_required", "unknown"}


@pytest.mark.parametrize(("code", "expected"), sorted(STRIPE_DECLINES.items()))
def test_stripe_row(code: str, expected: str) -> None:
    assert expected in CLASSES - {"unknown"}
    assert classify("stripe", code) == expected
    assert classify("fake", code) == expected  # the fake provider speaks Stripe
    assert classify("Stripe", f"  {code.upper()}\n") == expected
    # the table wins over a generic response type
    other = "soft_declined" if expected == "hard" else "hard_declined"
    assert classify("stripe", code, other) == expected


@pytest.mark.parametrize(("code", "expected"), sorted(BRAINTREE_DECLINES.items()))
def test_braintree_row(code: str, expected: str) -> None:
    assert expected in CLASSES - {"unknown"}
    assert classify("braintree", code) == expected
    assert classify("BRAINTREE", f" {code} ") == expected
    other = "soft_declined" if expected == "hard" else "hard_declined"
    assert classify("braintree", code, other) == expected


@pytest.mark.parametrize(("response_type", "expected"), sorted(RESPONSE_TYPES.items()))
def test_response_type_row(response_type: str, expected: str) -> None:
    assert classify("braintree", "2999", response_type) == expected
    assert classify("braintree", None, f" {response_type.upper()} ") == expected


# Decisions pinned independently of the table (a table edit must also edit these).
@pytest.mark.parametrize(
    ("provider", "code", "expected"),
    [
        ("stripe", "expired_card", "hard"),
        ("stripe", "incorrect_number", "hard"),
        ("stripe", "lost_card", "hard"),
        ("stripe", "stolen_card", "hard"),
        ("stripe", "pickup_card", "hard"),
        ("stripe", "fraudulent", "hard"),
        ("stripe", "incorrect_cvc", "hard"),
        ("stripe", "invalid_cvc", "hard"),
        ("stripe", "revocation_of_all_authorizations", "hard"),
        ("stripe", "previously_declined_do_not_retry", "hard"),
        ("stripe", "do_not_honor", "soft"),
        ("stripe", "insufficient_funds", "soft"),
        ("stripe", "generic_decline", "soft"),
        ("stripe", "card_declined", "soft"),
        ("stripe", "try_again_later", "soft"),
        ("stripe", "processing_error", "soft"),
        ("stripe", "authentication_required", "action_required"),
        ("stripe", "card_not_activated", "action_required"),
        ("braintree", "2000", "soft"),
        ("braintree", "2001", "soft"),
        ("braintree", "2004", "hard"),
        ("braintree", "2010", "hard"),
        ("braintree", "2014", "hard"),
        ("braintree", "2038", "soft"),
        ("braintree", "2044", "soft"),
        ("braintree", "2046", "soft"),
        ("braintree", "2047", "hard"),
        ("braintree", "2099", "action_required"),
        ("braintree", "3000", "soft"),
    ],
)
def test_pinned_decisions(provider: str, code: str, expected: str) -> None:
    assert classify(provider, code) == expected


@pytest.mark.parametrize(
    ("provider", "code", "response_type"),
    [
        ("stripe", None, None),
        ("stripe", "", None),
        ("stripe", "   ", None),
        ("stripe", "no_such_code", None),
        ("stripe", "no_such_code", "approved"),
        ("braintree", None, None),
        ("braintree", "1000", "approved"),  # an approval is not a decline class
        ("braintree", "9999", None),
        ("braintree", "9999", "weird_type"),
        ("paypal", "insufficient_funds", "hard_declined"),  # unknown provider
        ("", "2001", None),
    ],
)
def test_unknown_fallbacks(provider: str, code: str | None, response_type: str | None) -> None:
    assert classify(provider, code, response_type) == "unknown"


def test_tables_do_not_cross_providers() -> None:
    assert classify("stripe", "2001") == "unknown"
    assert classify("braintree", "insufficient_funds") == "unknown"


def test_tables_are_normalized_keys() -> None:
    for table in (STRIPE_DECLINES, BRAINTREE_DECLINES, RESPONSE_TYPES):
        assert all(key == key.strip().lower() for key in table)
