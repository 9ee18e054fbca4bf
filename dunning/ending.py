"""PURE: how a campaign ends, and what it leaves behind.

Several ends can reach a campaign close together: a payment (payment service, provider
webhook, an engine retry that succeeded), a resolution without payment (invoice voided or
marked uncollectible, subscription cancelled), and the end of the grace period — before or
after the terminal action (the provider cancel) ran. `winner` picks one, whatever the order
they arrived in:

    a payment wins over everything: the customer paid, so the end is never reported lost;
        after the terminal action ran it is `recovered_after_cancel` (the host reactivates)
    a resolution wins over exhaustion whose terminal action has not run
    exhaustion, once the terminal action ran, stands against a later resolution
    otherwise `exhausted`

`end_state` says what an end leaves behind (projection status, entitlement), and `answer`
what the host app is told for a subscription row, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from dunning.contracts import Superseded
from dunning.projection import ENDINGS

ClaimKind = Literal["paid", "resolved", "exhausted"]
PAID: ClaimKind = "paid"
RESOLVED: ClaimKind = "resolved"
EXHAUSTED: ClaimKind = "exhausted"
_RANK = {PAID: 0, RESOLVED: 1, EXHAUSTED: 2}


@dataclass(frozen=True, order=True)
class Claim:
    """One candidate end, as the campaign saw it (ids and bounded words only)."""

    kind: ClaimKind
    at: datetime
    reason: str = ""
    resolution: str = ""  # for `resolved`: the event kind (invoice_voided, subscription_canceled, ...)
    inferred: bool = False  # seen by an effect's check, not told by a message: its words yield


@dataclass(frozen=True)
class End:
    outcome: Literal["recovered", "resolved", "exhausted", "recovered_after_cancel"]
    reason: str
    resolution: str = ""


def winner(claims: Iterable[Claim], terminal_ran: bool) -> End | None:
    """The end that wins among `claims` (None when there is none yet). Order-independent:
    among claims of the winning kind, a message's words win over what an effect inferred,
    then the earliest (then the smallest) gives the reason."""
    found = sorted(claims, key=lambda c: (_RANK[c.kind], c.inferred, c.at, c.reason, c.resolution))
    if not found:
        return None
    paid = [c for c in found if c.kind == PAID]
    if paid:
        first = paid[0]
        return End("recovered_after_cancel" if terminal_ran else "recovered", first.reason)
    exhausted = [c for c in found if c.kind == EXHAUSTED]
    if terminal_ran and exhausted:
        return End("exhausted", exhausted[0].reason)
    resolved = [c for c in found if c.kind == RESOLVED]
    if resolved:
        return End("resolved", resolved[0].reason, resolved[0].resolution)
    return End("exhausted", exhausted[0].reason)


# --- what an end leaves behind ------------------------------------------------------
FULL, CANCELED = "full", "canceled"
# the status the projection takes for each event that resolves a campaign
RESOLVED_STATUS = {kind.value: status for kind, status in ENDINGS.items()}


def end_state(outcome: str, resolution: str, on_exhaustion: str) -> tuple[str, str]:
    """(subscription status, entitlement) a campaign's end leaves behind."""
    if outcome == "recovered":
        return "active", FULL
    if outcome == "recovered_after_cancel":  # paid, but the provider subscription is gone
        return ("unpaid" if on_exhaustion == "mark_unpaid" else "canceled"), CANCELED
    if outcome == "resolved":
        status = RESOLVED_STATUS.get(resolution, "active")
        return status, (CANCELED if status == "canceled" else FULL)
    return ("unpaid" if on_exhaustion == "mark_unpaid" else "canceled"), CANCELED


# --- what the host app is told --------------------------------------------------------
MSG_EXHAUSTED = (
    "Your subscription was ended because we could not collect payment. "
    "Update your payment method to reactivate it."
)
MSG_AFTER_CANCEL = (
    "We received your payment after your subscription was ended; it is being reactivated."
)


@dataclass(frozen=True)
class Answer:
    entitlement: str
    requires_attention: bool
    message: str | None


def answer(status: str, entitlement: str, last_outcome: str | None, past_due_message: str) -> Answer:
    """What the host app is told for one subscription row. A canceled subscription is
    entitled to nothing, whoever cancelled it; attention is needed while past_due, after
    exhaustion, and after a late payment that needs reactivating."""
    level = CANCELED if status == "canceled" else entitlement
    if status == "past_due":
        return Answer(level, True, past_due_message)
    if last_outcome == "recovered_after_cancel" and status in ("canceled", "unpaid"):
        return Answer(level, True, MSG_AFTER_CANCEL)
    if last_outcome == "exhausted" and status in ("canceled", "unpaid"):
        return Answer(level, True, MSG_EXHAUSTED)
    return Answer(level, level != FULL and status != "canceled", None)


# --- check-and-act --------------------------------------------------------------------
# what resolved a campaign whose effect finds the projection in this status
_RESOLVED_BY = {status: kind for kind, status in RESOLVED_STATUS.items() if status != "active"}


def superseded(status: str | None, anchor: datetime | None, campaign_anchor: datetime) -> Superseded | None:
    """Is the campaign begun at `campaign_anchor` still wanted, given the projection's
    status and anchor? None: yes (still past_due with this anchor); else why not."""
    if status is None:
        return Superseded(outcome="resolved", reason="subscription not found", kind="unknown")
    if status == "active":
        return Superseded(outcome="recovered", reason="subscription is active", kind="active")
    if status != "past_due":  # canceled, uncollectible, unpaid: ended without payment
        return Superseded(outcome="resolved", reason=f"subscription is {status}", kind=_RESOLVED_BY.get(status, status))
    if anchor != campaign_anchor:
        return Superseded(outcome="resolved", reason="campaign anchor changed", kind="superseded")
    return None
