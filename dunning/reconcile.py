"""PURE: what dunning should be for one subscription, given what every store says, and the
minimal list of actions to get there (issue 9, the recompute engine's core).

`reconcile(observed, config, now)` reads `Observed` (the provider, the projection row, the
running or last campaign, the ledger's last bad-debt rows; ids and bounded values only)
and answers a `Plan`: the desired state, the actions (each with a reason in words and the
fields that disagreed), and `deferred`, why something is not done now. It reads no clock
and does no I/O; `apply(observed, plan)` is what the actions would leave behind (dry-run
display, tests). Reconciling what `apply` leaves gives no actions (idempotent), and the
order of the ledger rows never matters.

The provider is the source of truth for money; the engine's stores follow it. The first
rule that holds decides (P = provider, C = campaign, J = projection row; "repair" is
repair_projection of the status and the anchor):

    observed (first that holds)            desired: status, entitlement, campaign   actions where stores differ
    -------------------------------------  ---------------------------------------  ----------------------------
    P unreadable                           what the engine's stores say now         none (deferred says so)
    bad_debt.entered, no later exit, no    the exhausted end: J's canceled/unpaid   set_entitlement,
      newer campaign known (C, J's last)     (canceled if P is), canceled, none     repair_projection
      ... P's invoice paid/void/written    (same)                                   none: leaving bad debt is the
          off                                                                         pay-bad-debt path
      ... a campaign still runs            (same)                                   none: needs attention
    P's invoice paid                       active, full, none (P canceled:          end_campaign recovered,
                                             canceled, canceled)                    set_entitlement, repair
    P canceled, invoice void or            ending.end_state(resolved, kind), none   end_campaign resolved(kind),
      uncollectible                                                                 set_entitlement, repair
    a campaign runs, P silent on the end   past_due, the campaign's level, it runs  set_entitlement, repair
      ... J names a newer anchor, P owes   past_due, full, a campaign at J's anchor end_campaign resolved
                                                                                    (superseded), start_campaign
      ... J names a newer anchor, P not    (same)                                   none: needs attention
    P owes: past_due/unpaid, invoice open  past_due, full, a campaign anchored at   start_campaign(anchor),
                                             J's anchor, else P's failed_at         set_entitlement, repair
      ... no failure time known, or a      (same)                                   none: needs attention
          campaign at it (or later) ended
    P past_due/unpaid, no open invoice     what the engine's stores say now         none: needs attention
    otherwise (no debt at P)               active, full, none                       set_entitlement, repair

Kind of resolution: subscription_canceled (P canceled wins), else invoice_voided or
invoice_marked_uncollectible. A campaign is ended only on the provider's positive word
(paid, void, uncollectible, canceled) or because the projection names another anchor;
never because the provider is silent. Recompute never cancels, charges or emails itself:
a campaign it starts does that on its own timeline.

In-flight guard: while the provider reports a payment processing, or a payment (the
provider's, or an engine retry whose result is unconfirmed) started less than
`config.in_flight_window` (default 30 minutes) before `now`, there are no actions; the
desired state is still reported, `withheld` holds what would be done, `deferred` says why.

Actions come in the order they are applied: campaign actions first (a campaign's end
writes its own entitlement), then set_entitlement, then repair_projection (status, then
the anchor), so the last writes are the desired values. A missing projection row is
created by its status repair, with the schema's default entitlement (full).

Over 300 lines: the views of each store, the plan and the rules over them are one
concern, read together (the table above is the index).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from dunning.consequences import START_LEVEL
from dunning.contracts import CampaignState, Outcome
from dunning.ending import CANCELED as LEVEL_CANCELED
from dunning.ending import FULL, end_state
from dunning.projection import ACTIVE, CANCELED, PAST_DUE, UNPAID

InvoiceState = Literal["draft", "open", "paid", "void", "uncollectible"]
DUNNING = frozenset({PAST_DUE, UNPAID})  # provider statuses that owe money on an open invoice
_BAD_DEBT = ("bad_debt.entered", "bad_debt.exited")  # sorted: an exit at the same time as an entry wins
RESOLVES = {"void": "invoice_voided", "uncollectible": "invoice_marked_uncollectible"}
Word = Annotated[str, Field(max_length=64)]
Id = Annotated[str, Field(min_length=1, max_length=255)]


class ReconcileConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    in_flight_window: timedelta = Field(default=timedelta(minutes=30), gt=timedelta(0))
    # the status an exhausted end leaves when the projection row does not say (ending.end_state)
    on_exhaustion: Literal["cancel", "mark_unpaid", "none"] = "cancel"


# --- what each store says ---------------------------------------------------------------
class ProviderView(BaseModel):
    """The provider's word, read through its API. `invoice_state` None: no invoice."""

    model_config = ConfigDict(frozen=True)

    status: Word  # active | past_due | unpaid | canceled | trialing | ...
    invoice_id: Id | None = None
    invoice_state: InvoiceState | None = None
    amount_due: int | None = Field(default=None, ge=0)  # minor units
    failed_at: datetime | None = None  # provider time of the latest invoice's failed payment
    payment_processing: bool = False  # the provider reports a payment processing
    payment_started_at: datetime | None = None  # the latest payment attempt, if known


class ProjectionView(BaseModel):
    """The `subscriptions` row (dunning.store.store.Subscription); `entitlement` is the
    stored entitlement the host app is told."""

    model_config = ConfigDict(frozen=True)

    status: Word
    dunning_campaign_started_at: datetime | None = None
    entitlement: Word = FULL
    last_outcome: Word | None = None
    last_campaign_started_at: datetime | None = None

    @classmethod
    def of(cls, row: _Row) -> ProjectionView:
        return cls(
            status=row.status, dunning_campaign_started_at=row.dunning_campaign_started_at,
            entitlement=row.entitlement, last_outcome=row.last_outcome,
            last_campaign_started_at=row.last_campaign_started_at,
        )  # fmt: skip


class CampaignView(BaseModel):
    """The running or last campaign (its `state` query, or its last result)."""

    model_config = ConfigDict(frozen=True)

    campaign_started_at: datetime
    outcome: Outcome = "running"
    entitlement: Word = START_LEVEL  # the level it holds
    payment_started_at: datetime | None = None  # its latest retry whose result is unconfirmed

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    @classmethod
    def of(cls, state: CampaignState) -> CampaignView:
        unconfirmed = [r.at for r in state.retries if r.outcome == "unconfirmed"]
        return cls(
            campaign_started_at=state.campaign_started_at, outcome=state.outcome, entitlement=state.entitlement,
            payment_started_at=max(unconfirmed, default=None),
        )  # fmt: skip


class LedgerEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Word  # bad_debt.entered | bad_debt.exited | ... (others are ignored)
    campaign_started_at: datetime
    occurred_at: datetime


class Observed(BaseModel):
    model_config = ConfigDict(frozen=True)

    subscription_id: Id
    provider: ProviderView | None  # None: could not be read
    projection: ProjectionView | None = None
    campaign: CampaignView | None = None
    ledger: tuple[LedgerEntry, ...] = ()


class _Row(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def dunning_campaign_started_at(self) -> datetime | None: ...
    @property
    def entitlement(self) -> str: ...
    @property
    def last_outcome(self) -> str | None: ...
    @property
    def last_campaign_started_at(self) -> datetime | None: ...


# --- what to do -------------------------------------------------------------------------
class _Act(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    drift: tuple[str, ...]  # the fields that disagreed ("store.field")


class StartCampaign(_Act):
    kind: Literal["start_campaign"] = "start_campaign"
    anchor: datetime


class EndCampaign(_Act):
    kind: Literal["end_campaign"] = "end_campaign"
    anchor: datetime  # the campaign identity to end
    outcome: Literal["recovered", "resolved"]
    resolution: str = ""  # resolved: subscription_canceled | invoice_voided | ... | superseded


class SetEntitlement(_Act):
    kind: Literal["set_entitlement"] = "set_entitlement"
    level: str


class RepairProjection(_Act):
    kind: Literal["repair_projection"] = "repair_projection"
    field: Literal["status", "dunning_campaign_started_at"]
    value: datetime | str | None = Field(union_mode="left_to_right")  # an anchor stays a datetime through JSON


Action = Annotated[StartCampaign | EndCampaign | SetEntitlement | RepairProjection, Field(discriminator="kind")]


class Desired(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: str
    entitlement: str
    campaign: bool  # a campaign should be running
    anchor: datetime | None  # ... begun at this anchor (None: no campaign, or unknown)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    subscription_id: str
    desired: Desired
    rule: str  # in words: what decided the desired state
    actions: tuple[Action, ...] = ()
    deferred: str | None = None  # why nothing (more) is done now
    withheld: tuple[Action, ...] = ()  # what the in-flight guard held back

    @property
    def drift(self) -> tuple[str, ...]:
        """Every field that disagreed, sorted (for `dunning.drift_detected`)."""
        return tuple(sorted({f for a in self.actions for f in a.drift}))


@dataclass(frozen=True)
class _Verdict:
    desired: Desired
    rule: str
    sources: tuple[str, ...]  # the observed fields that decided
    end: tuple[Literal["recovered", "resolved"], str] | None = None  # how a running campaign ends
    hold: str | None = None  # no actions, and why


def reconcile(observed: Observed, config: ReconcileConfig, now: datetime) -> Plan:
    v = _verdict(observed, config)
    wanted = () if v.hold else _actions(observed, v)
    flight = _in_flight(observed, config.in_flight_window, now)
    deferred = "; ".join(w for w in (flight, v.hold) if w) or None
    if flight:
        return Plan(subscription_id=observed.subscription_id, desired=v.desired, rule=v.rule,
                    deferred=deferred, withheld=wanted)  # fmt: skip
    return Plan(subscription_id=observed.subscription_id, desired=v.desired, rule=v.rule,
                actions=wanted, deferred=deferred)  # fmt: skip


def _verdict(o: Observed, config: ReconcileConfig) -> _Verdict:
    p, j, c = o.provider, o.projection, o.campaign
    running = c is not None and c.running
    if p is None:
        anchor = c.campaign_started_at if c is not None and running else (j.dunning_campaign_started_at if j else None)
        now_is = Desired(status=j.status if j else ACTIVE, entitlement=j.entitlement if j else FULL,
                         campaign=running, anchor=anchor)  # fmt: skip
        why = "the provider could not be read: nothing is changed without its word on the money"
        return _Verdict(now_is, "provider unreadable", (), hold=why)
    invoice = f"invoice {p.invoice_id}" if p.invoice_id else "the latest invoice"
    debt = _bad_debt(o)
    if debt is not None:
        status = CANCELED if p.status == CANCELED else (j.status if j and j.status in (CANCELED, UNPAID) else None)
        status = status or end_state("exhausted", "", config.on_exhaustion)[0]
        rule = f"in bad debt since {debt.isoformat()} (bad_debt.entered without bad_debt.exited)"
        desired = Desired(status=status, entitlement=LEVEL_CANCELED, campaign=False, anchor=None)
        if running:
            hold = f"{rule}, yet a campaign no newer than it runs: needs attention"
            return _Verdict(desired, rule, ("ledger.type", "campaign.outcome"), hold=hold)
        if p.invoice_state in ("paid", "void", "uncollectible"):
            hold = (f"{rule}, and the provider shows {invoice} {p.invoice_state}: leaving bad debt goes through "
                    "the guarded pay-bad-debt path, not recompute")  # fmt: skip
            return _Verdict(desired, rule, ("ledger.type", "provider.invoice_state"), hold=hold)
        return _Verdict(desired, rule, ("ledger.type",))
    if p.invoice_state == "paid":
        status = CANCELED if p.status == CANCELED else ACTIVE
        level = FULL if status == ACTIVE else LEVEL_CANCELED
        desired = Desired(status=status, entitlement=level, campaign=False, anchor=None)
        return _Verdict(desired, f"the provider shows {invoice} paid", ("provider.invoice_state",), ("recovered", ""))
    if p.status == CANCELED or p.invoice_state in RESOLVES:
        kind = "subscription_canceled" if p.status == CANCELED else RESOLVES[p.invoice_state or ""]
        status, level = end_state("resolved", kind, config.on_exhaustion)
        field = "provider.status" if p.status == CANCELED else "provider.invoice_state"
        rule = "the provider shows the subscription canceled" if p.status == CANCELED else (
            f"the provider shows {invoice} {p.invoice_state}")  # fmt: skip
        desired = Desired(status=status, entitlement=level, campaign=False, anchor=None)
        return _Verdict(desired, rule, (field,), ("resolved", kind))
    last_ended = _last_ended(o)
    owes = p.status in DUNNING and p.invoice_state == "open"
    if c is not None and running:
        started, named = c.campaign_started_at, j.dunning_campaign_started_at if j else None
        newer = named is not None and named > started  # the projection saw a later failure run
        anchor = named if newer and named is not None else started
        desired = Desired(status=PAST_DUE, entitlement=START_LEVEL if newer else c.entitlement, campaign=True,
                          anchor=anchor)  # fmt: skip
        rule = f"the campaign begun {started.isoformat()} runs and the provider has not ended the debt"
        if newer and not owes:
            hold = (f"the projection names a newer anchor {anchor.isoformat()} than the running campaign's, "
                    f"and the provider shows {p.status} with {invoice} {p.invoice_state or 'missing'}: "
                    "needs attention")  # fmt: skip
            return _Verdict(desired, rule, (), hold=hold)
        if newer and last_ended is not None and anchor <= last_ended:
            hold = f"the projection names anchor {anchor.isoformat()}, whose campaign already ended: needs attention"
            return _Verdict(desired, rule, (), hold=hold)
        return _Verdict(desired, rule, ("campaign.outcome", "campaign.campaign_started_at"))
    if owes:
        failed = (j.dunning_campaign_started_at if j else None) or p.failed_at
        rule = f"the provider shows the subscription {p.status} with {invoice} open and no campaign runs"
        desired = Desired(status=PAST_DUE, entitlement=START_LEVEL, campaign=True, anchor=failed)
        if failed is None:
            return _Verdict(desired, rule, (), hold="no failure time is known to anchor a campaign: needs attention")
        if last_ended is not None and failed <= last_ended:
            hold = f"the campaign anchored at {failed.isoformat()} (or a later one) already ended: needs attention"
            return _Verdict(desired, rule, (), hold=hold)
        return _Verdict(desired, rule, ("provider.status", "provider.invoice_state"))
    if p.status in DUNNING:
        now_is = Desired(status=j.status if j else ACTIVE, entitlement=j.entitlement if j else FULL, campaign=False,
                         anchor=j.dunning_campaign_started_at if j else None)  # fmt: skip
        rule = f"the provider shows the subscription {p.status} without an open invoice"
        return _Verdict(now_is, rule, (), hold=f"{rule}: nothing to collect against; needs attention")
    desired = Desired(status=ACTIVE, entitlement=FULL, campaign=False, anchor=None)
    rule = f"the provider shows the subscription {p.status} with no debt"
    return _Verdict(desired, rule, ("provider.status", "provider.invoice_state"))


def _actions(o: Observed, v: _Verdict) -> tuple[Action, ...]:
    d, j, c = v.desired, o.projection, o.campaign
    out: list[Action] = []
    running = c is not None and c.running
    if c is not None and running and (not d.campaign or c.campaign_started_at != d.anchor):
        anchor = c.campaign_started_at
        if d.campaign:  # the projection names another anchor: this campaign's effects are all stale
            why = f"the projection's anchor is {_s(d.anchor)}, not the running campaign's {anchor.isoformat()}"
            drift = ("campaign.campaign_started_at", "projection.dunning_campaign_started_at")
            out.append(EndCampaign(reason=why, drift=drift, anchor=anchor, outcome="resolved", resolution="superseded"))
        else:
            outcome, kind = v.end or ("resolved", "superseded")
            why = f"{v.rule}; the campaign begun {anchor.isoformat()} is still running: it ends {outcome}"
            out.append(EndCampaign(reason=why, drift=("campaign.outcome", *v.sources), anchor=anchor,
                                   outcome=outcome, resolution=kind))  # fmt: skip
    if d.campaign and d.anchor is not None and not (running and c is not None and c.campaign_started_at == d.anchor):
        why = f"{v.rule}: start a campaign anchored at {d.anchor.isoformat()}"
        out.append(StartCampaign(reason=why, drift=("campaign.outcome", *v.sources), anchor=d.anchor))
    stored = j.entitlement if j else FULL  # a missing row is created (by its status repair) at the default
    if stored != d.entitlement:
        held = running and c is not None and c.campaign_started_at == d.anchor
        source = ("campaign.entitlement",) if held else v.sources
        why = f"the store holds entitlement {stored}; {v.rule}, which implies {d.entitlement}"
        out.append(SetEntitlement(reason=why, drift=("projection.entitlement", *source), level=d.entitlement))
    repairs: list[tuple[Literal["status", "dunning_campaign_started_at"], str | datetime | None]] = [
        ("status", d.status), ("dunning_campaign_started_at", d.anchor)]  # fmt: skip
    for field, value in repairs:
        old = getattr(j, field) if j else None
        if old != value:
            why = f"the projection's {field} is {_s(old)}; {v.rule}, which implies {_s(value)}"
            out.append(RepairProjection(reason=why, drift=(f"projection.{field}", *v.sources), field=field,
                                        value=value))  # fmt: skip
    return tuple(out)


def apply(observed: Observed, plan: Plan) -> Observed:
    """What `plan.actions` leave behind, as the stores would then say (dry run, tests).
    The provider and the ledger are never changed: recompute does not touch the money."""
    campaign, row = observed.campaign, observed.projection
    for a in plan.actions:
        if isinstance(a, StartCampaign):  # one campaign at a time: a running one must end first
            if campaign is None or not campaign.running:
                campaign = CampaignView(campaign_started_at=a.anchor)
        elif isinstance(a, EndCampaign):
            if campaign is not None and campaign.campaign_started_at == a.anchor:
                campaign = campaign.model_copy(update={"outcome": a.outcome})
        else:
            base = row or ProjectionView(status=ACTIVE)
            if isinstance(a, SetEntitlement):
                row = base.model_copy(update={"entitlement": a.level})
            else:
                row = base.model_copy(update={a.field: a.value})
    return observed.model_copy(update={"campaign": campaign, "projection": row})


def _in_flight(o: Observed, window: timedelta, now: datetime) -> str | None:
    p, c = o.provider, o.campaign
    if p is not None and p.payment_processing:
        return "the provider reports a payment processing: nothing is changed until it settles"
    starts = [t for t in (p.payment_started_at if p else None, c.payment_started_at if c else None) if t]
    latest = max(starts, default=None)
    if latest is not None and now - latest < window:
        return (f"a payment started at {latest.isoformat()}, within the {window} in-flight window: "
                f"nothing is changed before {(latest + window).isoformat()}")  # fmt: skip
    return None


def _bad_debt(o: Observed) -> datetime | None:
    """When the subscription entered bad debt, if it has not left it since and no campaign
    newer than the one that ended in it is known (ties: an exit at the same time wins).
    Only campaign identities count, not the projection's anchor, which recompute repairs."""
    rows = sorted((e.occurred_at, e.type, e.campaign_started_at) for e in o.ledger if e.type in _BAD_DEBT)
    if not rows or rows[-1][1] != "bad_debt.entered":
        return None
    at, _, started = rows[-1]
    c, j = o.campaign, o.projection
    known = [c.campaign_started_at if c else None, j.last_campaign_started_at if j else None]
    return None if any(a is not None and a > started for a in known) else at


def _last_ended(o: Observed) -> datetime | None:
    """The anchor of the newest campaign known to have ended: none older or equal starts again."""
    c, j = o.campaign, o.projection
    ended = [c.campaign_started_at] if c is not None and not c.running else []
    if j is not None and j.last_campaign_started_at is not None:
        ended.append(j.last_campaign_started_at)
    return max(ended, default=None)


def _s(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value if value is not None else "none")
