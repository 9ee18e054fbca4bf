"""Pydantic models that cross a boundary: workflow input/output, queries, billing events.

Everything here carries ids and bounded values only, never an email address or a name.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from dunning import text

Outcome = Literal["running", "recovered", "resolved", "exhausted", "recovered_after_cancel"]
EndOutcome = Literal["recovered", "resolved", "exhausted", "recovered_after_cancel"]


class StepSpec(BaseModel):
    """One email step of a campaign: sent `after_days` after the anchor."""

    after_days: float = Field(ge=0)
    key: str
    template: str


DeclineClass = Literal["hard", "soft", "action_required", "unknown"]
DECLINE_CLASSES: tuple[DeclineClass, ...] = ("hard", "soft", "action_required", "unknown")


class RetryPolicy(BaseModel):
    """What the engine does for one decline class."""

    model_config = {"extra": "forbid"}

    days: list[float] = Field(default_factory=list)  # engine-driven retries, days after the anchor
    email: str | None = None  # template sent at once when the campaign enters this class
    retry_on_method_update: bool = True  # retry as soon as payment_method_updated arrives


class ConsequenceRule(BaseModel):
    """One rung of the ladder: the first rule (most severe first) whose conditions hold wins."""

    model_config = {"extra": "forbid"}

    level: str
    min_days: float = Field(default=0, ge=0)
    decline_class: DeclineClass | None = None
    min_amount_due: int | None = Field(default=None, ge=0)  # minor units


class CampaignPlan(BaseModel):
    """The cadence a campaign runs, fixed into the workflow history when it begins."""

    steps: list[StepSpec]
    grace_days: float
    day_seconds: float
    retries_mode: Literal["provider", "engine", "off"] = "off"
    retry_policies: dict[str, RetryPolicy] = Field(default_factory=dict)
    ladder: list[ConsequenceRule] = Field(default_factory=list)
    on_exhaustion: Literal["cancel", "mark_unpaid", "none"] = "none"
    outbound: bool = False  # a receiver is configured: emit outbound events
    # the rollout gate, read once when the campaign begins (dunning.rollout): a shadow
    # campaign records what it would do (dunning.shadow_action) and does none of it
    mode: Literal["live", "shadow"] = "live"
    # lateness that is the engine's own (campaign.late_tolerance_seconds); 0 in the plans of
    # runs begun before it, which replay as they ran
    late_tolerance_seconds: float = 0


class CampaignInput(BaseModel):
    """Workflow input: ids and the anchor (provider time of the failure) only."""

    subscription_id: str
    customer_id: str
    failed_at: datetime
    provider: str = "fake"
    invoice_id: str | None = None
    decline_class: DeclineClass | None = None
    amount_due: int | None = None
    currency: str | None = None  # ISO 4217, as the provider gave it
    plan_id: str | None = None
    # This run only records a payment that arrived after the exhausted campaign begun at
    # `failed_at` had its terminal action run (ends recovered_after_cancel at once).
    after_cancel: bool = False
    # The run's command shape, chosen by the starter and kept in the run's history, so a
    # run always replays as it began: 1 = every store step an activity (runs started before
    # shape 2); 2 = store-only steps as local activities and one upsert at the end
    # (workflows.campaign.LEAN_SHAPE).
    shape: int = 1
    # The failure that started this run, applied as it begins (as `attach` applies it to a
    # run that is already going). Ids and bounded values only: BillingEvent.for_workflow().
    event: BillingEvent | None = None


CURRENT_SHAPE = 2


class StepRequest(BaseModel):
    """Email activity input: which step of which campaign identity, due when."""

    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    step_key: str
    template: str
    due_at: datetime
    grace_ends_at: datetime
    scheduled_at: datetime | None = None  # the step's boundary: later than this is "late_by"
    # when this campaign's first email really went out (None: none did), so that no
    # email claims an earlier notice the customer never received
    first_notice_at: datetime | None = None


class StepOutcome(BaseModel):
    """What the email activity did for one step."""

    step_key: str
    status: Literal["sent", "already_sent", "unconfirmed", "superseded"]
    message_id: str
    superseded: Superseded | None = None


class Superseded(BaseModel):
    """An effect found, in its own claim transaction, that the subscription is no longer
    past_due with this campaign's anchor: nothing was done, and this is why."""

    outcome: Literal["recovered", "resolved"]
    reason: str
    kind: str = ""  # the projection status that superseded it (active, canceled, ...)


class RetryRequest(BaseModel):
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    retry_key: str
    provider: str
    invoice_id: str | None = None
    at: datetime
    scheduled_at: datetime | None = None  # the retry day's boundary: later than this is "late_by"


class RetryOutcome(BaseModel):
    retry_key: str
    status: Literal["succeeded", "declined", "unconfirmed", "superseded"]
    decline_code: str | None = None
    decline_class: DeclineClass | None = None
    superseded: Superseded | None = None


class RetryRecord(BaseModel):
    key: str
    at: datetime
    outcome: str
    decline_class: str | None = None


class EntitlementChange(BaseModel):
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    key: str
    level: str
    previous: str
    at: datetime
    scheduled_at: datetime | None = None  # the rung's boundary: later than this is "late_by"


class SkippedActions(BaseModel):
    """Due actions the campaign did not perform, and why (dunning.journey's catch-up rules)."""

    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    keys: list[str]
    reason: str
    at: datetime


def late_by(at: datetime, scheduled_at: datetime | None) -> dict[str, float]:
    """`{"late_by": seconds}` for a ledger row when an action ran a second or more after
    its due time, else nothing."""
    late = (at - scheduled_at).total_seconds() if scheduled_at else 0.0
    return {"late_by": round(late, 3)} if late >= 1 else {}


class EffectOutcome(BaseModel):
    """A consequence change or terminal action: done (with a detail), or superseded."""

    status: Literal["done", "superseded", "none"]
    detail: str = ""
    superseded: Superseded | None = None


class TerminalRequest(BaseModel):
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    provider: str
    invoice_id: str | None = None
    action: Literal["cancel", "mark_unpaid", "none"]


class OutboundEvent(BaseModel):
    """What host apps receive (signed): ids and bounded values only."""

    type: Literal[
        "campaign_started", "consequence_changed", "recovered", "resolved", "exhausted", "recovered_after_cancel",
        "bad_debt_exited",
    ]
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    occurred_at: datetime
    data: dict[str, str | int | float | None] = Field(default_factory=dict)


class NextStep(BaseModel):
    key: str
    kind: str
    at: datetime


class CampaignState(BaseModel):
    """Answer of the `state` query, and of `dunning campaign status --json`."""

    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    stage: str
    outcome: Outcome = "running"
    steps_sent: list[str] = Field(default_factory=list)
    steps_unconfirmed: list[str] = Field(default_factory=list)
    steps_skipped: list[str] = Field(default_factory=list)
    steps_failed: list[str] = Field(default_factory=list)  # certainly not sent (e.g. no address)
    next_step: NextStep | None = None
    reason: str = ""
    ended_at: datetime | None = None
    last_event: str | None = None
    decline_class: str | None = None
    provider_attempts: int | None = None
    entitlement: str = "full"
    retries: list[RetryRecord] = Field(default_factory=list)
    terminal_action: str | None = None


class CampaignEnd(BaseModel):
    """Passed to the finish activity: how the campaign ended. The store derives the
    entitlement and the projection's end from it (dunning.ending.end_state)."""

    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    outcome: EndOutcome
    reason: str = ""
    kind: str = ""  # what resolved it: invoice_voided, invoice_marked_uncollectible, subscription_canceled
    at: datetime
    on_exhaustion: Literal["cancel", "mark_unpaid", "none"] = "none"
    decline_class: str | None = None
    plan_id: str | None = None
    shadow: bool = False  # a shadow campaign's end: recorded, nothing restricted or entered


class ShadowAction(BaseModel):
    """What a shadow campaign would have done now (dunning.shadow_action): ids and words."""

    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    key: str  # the journey's key (first_notice, retry@..., consequence key, exhausted)
    action: Literal["email", "charge", "consequence", "cancel", "mark_unpaid", "none"]
    detail: str = ""  # the template, the entitlement level
    at: datetime
    scheduled_at: datetime | None = None


class ShadowOutcome(BaseModel):
    status: Literal["recorded", "superseded"]
    superseded: Superseded | None = None


class Resolution(BaseModel):
    """The `resolve` signal: ended without payment, and by what."""

    kind: str  # EventKind value, or "superseded"
    reason: str


class RecoverRequest(BaseModel):
    """The payment service's `recover` Update: ids and bounded words only."""

    event_id: str = Field(min_length=1, max_length=255)
    reason: str = Field(default="payment recovered", max_length=200)


class RecoverResult(BaseModel):
    """What the campaign really did with a recovery: `recovered`, `recovered_after_cancel`,
    or `already_ended` (then `outcome` says how it had ended)."""

    status: Literal["recovered", "recovered_after_cancel", "already_ended", "no_campaign"]
    outcome: Outcome | None = None
    subscription_id: str
    campaign_started_at: datetime | None = None
    event_id: str = ""  # the payment service's event (its idempotency key, prefixed)
    duplicate: bool = False  # a repeat of that event: the first answer, nothing new done


class AttachRequest(BaseModel):
    """Update-with-start from the dispatcher: the failure that (re)starts a campaign.
    The running campaign applies it only if it has the same anchor."""

    event: BillingEvent
    anchor: datetime


class AttachResult(BaseModel):
    campaign_started_at: datetime  # the running campaign's anchor
    applied: bool


class EventKind(StrEnum):
    payment_failed = "payment_failed"
    payment_succeeded = "payment_succeeded"
    payment_action_required = "payment_action_required"
    payment_method_updated = "payment_method_updated"
    invoice_marked_uncollectible = "invoice_marked_uncollectible"
    invoice_voided = "invoice_voided"
    subscription_canceled = "subscription_canceled"
    bad_debt_paid = "bad_debt_paid"
    payment_recovered = "payment_recovered"  # from the payment service
    drift_detected = "drift_detected"
    recompute_requested = "recompute_requested"


# Every text field of a BillingEvent, with the most characters it may hold (its column).
TEXT_LIMITS: dict[str, int] = {
    "event_id": text.MAX_ID, "event_type": 128, "subscription_id": text.MAX_ID, "customer_id": text.MAX_ID,
    "invoice_id": text.MAX_ID, "customer_email": 320, "customer_name": 255, "decline_code": 64,
    "decline_message": 1000, "currency": 16, "plan_id": text.MAX_ID, "subscription_status": 64, "note": 200,
}  # fmt: skip


class BillingEvent(BaseModel):
    """One billing event from any provider, normalized.

    `customer_email`/`customer_name` are kept only until the customers table is written;
    they never enter a workflow input (see `for_workflow`).
    """

    provider: Literal["stripe", "braintree", "fake"]
    event_id: str
    event_type: str  # the provider's own type string, for the inbox and counters
    kind: EventKind | None  # None: a type the engine records but does not act on
    occurred_at: datetime  # provider time of the event
    subscription_id: str | None = None
    customer_id: str | None = None
    invoice_id: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    decline_code: str | None = None
    decline_message: str | None = None
    decline_class: DeclineClass | None = None
    attempt_count: int | None = None
    next_provider_retry_at: datetime | None = None
    amount_due: int | None = None  # minor units
    currency: str | None = None
    plan_id: str | None = None  # the provider's plan / price / product id
    subscription_status: str | None = None  # provider status after the event, if given
    note: str | None = Field(default=None, max_length=200)  # the payment service's reason (words, no people)

    @field_validator(*TEXT_LIMITS)
    @classmethod
    def _fit_text(cls, value: str | None, info: ValidationInfo) -> str | None:
        """NUL, lone surrogates and over-long values are refused, naming the field (see
        dunning.text); never cut."""
        found = text.problem(value, TEXT_LIMITS[info.field_name or ""]) if isinstance(value, str) else None
        if found:
            raise ValueError(f"{info.field_name} {found}")
        return value

    def for_workflow(self) -> BillingEvent:
        """The same event without personal data, safe for a workflow signal."""
        return self.model_copy(update={"customer_email": None, "customer_name": None, "decline_message": None})


# Some models name one defined after them (CampaignInput -> BillingEvent, StepOutcome ->
# Superseded): resolve every one now, so a worker that decodes an input or a result before
# anything else touched the models can (pydantic would otherwise fail "not fully defined"
# in a fresh process, e.g. a restarted worker replaying a campaign).
for _model in [v for v in list(globals().values()) if isinstance(v, type) and issubclass(v, BaseModel)
               and v.__module__ == __name__]:  # fmt: skip
    if not _model.__pydantic_complete__:
        _model.model_rebuild()
