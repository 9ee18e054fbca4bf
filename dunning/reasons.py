"""PURE: the payment service's `reason`, a code from a closed vocabulary. It goes into the
campaign's history and the ledger, so it is never free text (free text carries people:
"paid by ada@example.com").

    payment_succeeded   the failed payment went through (the default)
    retry_succeeded     a retry of the failed charge went through
    card_updated        the customer gave a new payment method and it was charged
    paid_out_of_band    paid outside the provider: bank transfer, cheque, cash
    invoice_paid        the invoice was marked paid (e.g. by the billing team)
    manual_adjustment   the balance was credited, waived or adjusted by hand
"""

from __future__ import annotations

REASONS: tuple[str, ...] = (
    "payment_succeeded",
    "retry_succeeded",
    "card_updated",
    "paid_out_of_band",
    "invoice_paid",
    "manual_adjustment",
)
DEFAULT = "payment_succeeded"


def check(reason: str | None) -> str:
    """The code to record (None or "" -> the default). Raises ValueError listing the
    allowed codes; the message never repeats the refused text."""
    if reason is None or reason == "":
        return DEFAULT
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)} (default {DEFAULT})")
    return reason
