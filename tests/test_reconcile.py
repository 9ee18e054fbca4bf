"""The pure recompute core: one subscription's stores -> the desired state and the minimal
actions. Properties over every combination of observations, then named scenarios.

Over 300 lines: the scenario table is the readable specification of `dunning.reconcile`
and stays next to the properties it illustrates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dunning.contracts import CampaignState, RetryRecord
from dunning.reconcile import (
    CampaignView,
    Desired,
    EndCampaign,
    LedgerEntry,
    Observed,
    Plan,
    ProjectionView,
    ProviderView,
    ReconcileConfig,
    RepairProjection,
    SetEntitlement,
    StartCampaign,
    apply,
    reconcile,
)
from dunning.store.store import Subscription

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=3)
CFG = ReconcileConfig()
KINDS = {"start_campaign", "end_campaign", "set_entitlement", "repair_projection"}

# a few instants, so that anchors, failures and ledger rows often coincide
times = st.sampled_from([T0 - timedelta(days=9), T0 - timedelta(days=2), T0, T0 + timedelta(hours=5)])
# payment starts: long ago, just outside the window, just inside it, and now
starts = st.none() | st.sampled_from(
    [T0, NOW - timedelta(minutes=30), NOW - timedelta(minutes=29), NOW - timedelta(seconds=1)]
)
levels = st.sampled_from(["full", "restricted", "canceled"])
providers = st.builds(
    ProviderView,
    status=st.sampled_from(["active", "past_due", "unpaid", "canceled", "trialing"]),
    invoice_id=st.sampled_from([None, "in_1"]),
    invoice_state=st.sampled_from([None, "draft", "open", "paid", "void", "uncollectible"]),
    amount_due=st.sampled_from([None, 0, 4200]),
    failed_at=st.none() | times,
    payment_processing=st.booleans(),
    payment_started_at=starts,
)
projections = st.builds(
    ProjectionView,
    status=st.sampled_from(["active", "past_due", "canceled", "unpaid", "uncollectible"]),
    dunning_campaign_started_at=st.none() | times,
    entitlement=levels,
    last_outcome=st.sampled_from([None, "recovered", "resolved", "exhausted"]),
    last_campaign_started_at=st.none() | times,
)
campaigns = st.builds(
    CampaignView,
    campaign_started_at=times,
    outcome=st.sampled_from(["running", "running", "recovered", "resolved", "exhausted"]),
    entitlement=levels,
    payment_started_at=starts,
)
entries = st.builds(
    LedgerEntry,
    type=st.sampled_from(["bad_debt.entered", "bad_debt.exited", "dunning.step_sent"]),
    campaign_started_at=times,
    occurred_at=times,
)


@st.composite
def observations(draw: st.DrawFn) -> Observed:
    return Observed(
        subscription_id="sub_1",
        provider=draw(st.none() | providers),
        projection=draw(st.none() | projections),
        campaign=draw(st.none() | campaigns),
        ledger=tuple(draw(st.lists(entries, max_size=4))),
    )


def settled(o: Observed) -> Observed:
    """The same observations with no payment in flight."""
    p = o.provider and o.provider.model_copy(update={"payment_processing": False, "payment_started_at": None})
    c = o.campaign and o.campaign.model_copy(update={"payment_started_at": None})
    return o.model_copy(update={"provider": p, "campaign": c})


observed_any = observations()
observed_settled = observations().map(settled)


# --- (1) idempotent and minimal ----------------------------------------------------------
@settings(max_examples=600)
@given(observed_any)
def test_applying_the_plan_leaves_nothing_to_do(o: Observed) -> None:
    plan = reconcile(o, CFG, NOW)
    after = apply(o, plan)
    again = reconcile(after, CFG, NOW)
    assert again.actions == ()
    assert again.desired == plan.desired
    assert apply(after, again) == after


@settings(max_examples=600)
@given(observed_settled)
def test_every_action_is_needed(o: Observed) -> None:
    """Minimal: leave any one action out and the stores still disagree."""
    plan = reconcile(o, CFG, NOW)
    for i in range(len(plan.actions)):
        partial = plan.model_copy(update={"actions": plan.actions[:i] + plan.actions[i + 1 :]})
        assert reconcile(apply(o, partial), CFG, NOW).actions, f"{plan.actions[i].kind} was not needed"


@settings(max_examples=300)
@given(observed_settled)
def test_every_action_says_why(o: Observed) -> None:
    plan = reconcile(o, CFG, NOW)
    for a in plan.actions:
        assert a.kind in KINDS
        assert a.reason and a.drift
        assert all("." in f for f in a.drift)
    assert plan.drift == tuple(sorted({f for a in plan.actions for f in a.drift}))
    assert (plan.deferred is None) or not plan.withheld or not plan.actions


# --- (2) the provider says paid: recovered, nothing else -------------------------------------
def bad_debt(o: Observed) -> bool:
    """Entered without a later exit, and no newer campaign identity known."""
    rows = sorted((e.occurred_at, e.type, e.campaign_started_at) for e in o.ledger if e.type.startswith("bad_debt."))
    if not rows or rows[-1][1] != "bad_debt.entered":
        return False
    c, j = o.campaign, o.projection
    known = [c.campaign_started_at if c else None, j.last_campaign_started_at if j else None]
    return not any(a is not None and a > rows[-1][2] for a in known)


@settings(max_examples=600)
@given(observed_any, st.sampled_from(["active", "past_due", "unpaid", "canceled"]))
def test_paid_invoice_never_starts_or_keeps_a_campaign(o: Observed, status: str) -> None:
    o = o.model_copy(update={"provider": ProviderView(status=status, invoice_id="in_1", invoice_state="paid")})
    plan = reconcile(o, CFG, NOW)
    acts = plan.actions + plan.withheld
    assert {a.kind for a in acts} <= KINDS  # no cancel, charge or email kind exists at all
    assert not any(isinstance(a, StartCampaign) for a in acts)
    assert not any(isinstance(a, EndCampaign) and a.outcome != "recovered" for a in acts)
    assert plan.desired.campaign is False and plan.desired.anchor is None
    running = o.campaign is not None and o.campaign.running
    ends = [(a.anchor, a.outcome) for a in acts if isinstance(a, EndCampaign)]
    if running and not bad_debt(o):  # acted on now, or withheld until the payment in flight settles
        assert o.campaign is not None and ends == [(o.campaign.campaign_started_at, "recovered")]
    if bad_debt(o):  # bad debt is left only through the guarded pay-bad-debt path
        assert plan.actions == () and plan.withheld == () and plan.deferred
        assert "pay-bad-debt" in plan.deferred or (running and "needs attention" in plan.deferred)
    elif status != "canceled":
        assert (plan.desired.status, plan.desired.entitlement) == ("active", "full")
    assert reconcile(apply(o, plan), CFG, NOW).desired.campaign is False


# --- (3) in-flight guard ------------------------------------------------------------------
@settings(max_examples=400)
@given(observed_any, st.sampled_from(["processing", "provider", "campaign"]), st.integers(0, 29 * 60 + 59))
def test_never_acts_while_a_payment_is_in_flight(o: Observed, how: str, ago: int) -> None:
    started = NOW - timedelta(seconds=ago)
    p = o.provider or ProviderView(status="past_due", invoice_state="open")
    if how == "processing":
        p = p.model_copy(update={"payment_processing": True})
    elif how == "provider":
        p = p.model_copy(update={"payment_started_at": started})
    c = o.campaign
    if how == "campaign":
        c = (c or CampaignView(campaign_started_at=T0)).model_copy(update={"payment_started_at": started})
    o = o.model_copy(update={"provider": p, "campaign": c})
    plan = reconcile(o, CFG, NOW)
    assert plan.actions == ()
    assert plan.deferred and "payment" in plan.deferred
    assert plan == reconcile(o, CFG, NOW)
    # the desired state is reported all the same, and what was held back is what acts later
    later = reconcile(settled(o), CFG, NOW)
    assert plan.desired == later.desired
    assert plan.withheld == later.actions


@given(observed_settled)
def test_a_payment_started_before_the_window_does_not_block(o: Observed) -> None:
    if o.provider is None:
        return
    before = o.provider.model_copy(update={"payment_started_at": NOW - timedelta(minutes=30)})
    old = o.model_copy(update={"provider": before})
    assert reconcile(old, CFG, NOW) == reconcile(o, CFG, NOW)
    wide = ReconcileConfig(in_flight_window=timedelta(hours=1))
    assert reconcile(old, wide, NOW).actions == ()


# --- (4) order independence --------------------------------------------------------------
@settings(max_examples=400)
@given(st.data())
def test_any_order_of_the_same_observations_gives_the_same_plan(data: st.DataObject) -> None:
    o = data.draw(observed_any)
    ledger = data.draw(st.lists(entries, max_size=6))
    shuffled = data.draw(st.permutations(ledger))
    one = reconcile(o.model_copy(update={"ledger": tuple(ledger)}), CFG, NOW)
    two = reconcile(o.model_copy(update={"ledger": tuple(shuffled)}), CFG, NOW)
    assert one == two


# --- named scenarios ----------------------------------------------------------------------
A = T0  # the failure that began the campaign
OPEN_PAST_DUE = ProviderView(status="past_due", invoice_id="in_1", invoice_state="open", amount_due=4200, failed_at=A)
PAID = ProviderView(status="active", invoice_id="in_1", invoice_state="paid", amount_due=0, failed_at=A)
IN_DUNNING = ProjectionView(status="past_due", dunning_campaign_started_at=A)
RUNNING = CampaignView(campaign_started_at=A)


def obs(provider: ProviderView | None, projection: ProjectionView | None, campaign: CampaignView | None = None,
        ledger: tuple[LedgerEntry, ...] = ()) -> Observed:  # fmt: skip
    return Observed(subscription_id="sub_1", provider=provider, projection=projection, campaign=campaign, ledger=ledger)


def shape(plan: Plan) -> list[tuple]:
    out: list[tuple] = []
    for a in plan.actions:
        if isinstance(a, StartCampaign):
            out.append((a.kind, a.anchor))
        elif isinstance(a, EndCampaign):
            out.append((a.kind, a.outcome, a.resolution))
        elif isinstance(a, SetEntitlement):
            out.append((a.kind, a.level))
        elif isinstance(a, RepairProjection):
            out.append((a.kind, a.field, a.value))
    return out


ENTERED = LedgerEntry(type="bad_debt.entered", campaign_started_at=A, occurred_at=A + timedelta(days=14))
SCENARIOS = {
    "invoice paid behind the engine's back while a campaign runs": (
        obs(
            PAID,
            IN_DUNNING.model_copy(update={"entitlement": "restricted"}),
            RUNNING.model_copy(update={"entitlement": "restricted"}),
        ),
        Desired(status="active", entitlement="full", campaign=False, anchor=None),
        [
            ("end_campaign", "recovered", ""),
            ("set_entitlement", "full"),
            ("repair_projection", "status", "active"),
            ("repair_projection", "dunning_campaign_started_at", None),
        ],
    ),
    "a dropped payment_failed webhook": (
        obs(OPEN_PAST_DUE, ProjectionView(status="active")),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A),
        [
            ("start_campaign", A),
            ("repair_projection", "status", "past_due"),
            ("repair_projection", "dunning_campaign_started_at", A),
        ],
    ),
    "a wrong entitlement in the store, campaign running": (
        obs(
            OPEN_PAST_DUE,
            IN_DUNNING.model_copy(update={"entitlement": "canceled"}),
            RUNNING.model_copy(update={"entitlement": "restricted"}),
        ),
        Desired(status="past_due", entitlement="restricted", campaign=True, anchor=A),
        [("set_entitlement", "restricted")],
    ),
    "a wrong entitlement in the store, healthy": (
        obs(
            ProviderView(status="active", invoice_state="paid"),
            ProjectionView(status="active", entitlement="restricted"),
        ),
        Desired(status="active", entitlement="full", campaign=False, anchor=None),
        [("set_entitlement", "full")],
    ),
    "everything agrees, in dunning": (
        obs(OPEN_PAST_DUE, IN_DUNNING, RUNNING),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A),
        [],
    ),
    "everything agrees, healthy": (
        obs(ProviderView(status="active"), ProjectionView(status="active")),
        Desired(status="active", entitlement="full", campaign=False, anchor=None),
        [],
    ),
    "payment in flight (invoice just paid, campaign running)": (
        obs(PAID.model_copy(update={"payment_started_at": NOW - timedelta(minutes=5)}), IN_DUNNING, RUNNING),
        Desired(status="active", entitlement="full", campaign=False, anchor=None),
        [],
    ),
    "the provider reports a payment processing": (
        obs(OPEN_PAST_DUE.model_copy(update={"payment_processing": True}), ProjectionView(status="active")),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A),
        [],
    ),
    "invoice voided at the provider while a campaign runs": (
        obs(OPEN_PAST_DUE.model_copy(update={"invoice_state": "void", "status": "active"}), IN_DUNNING, RUNNING),
        Desired(status="active", entitlement="full", campaign=False, anchor=None),
        [
            ("end_campaign", "resolved", "invoice_voided"),
            ("repair_projection", "status", "active"),
            ("repair_projection", "dunning_campaign_started_at", None),
        ],
    ),
    "subscription canceled at the provider while a campaign runs": (
        obs(OPEN_PAST_DUE.model_copy(update={"status": "canceled"}), IN_DUNNING, RUNNING),
        Desired(status="canceled", entitlement="canceled", campaign=False, anchor=None),
        [
            ("end_campaign", "resolved", "subscription_canceled"),
            ("set_entitlement", "canceled"),
            ("repair_projection", "status", "canceled"),
            ("repair_projection", "dunning_campaign_started_at", None),
        ],
    ),
    "the projection names another anchor than the running campaign": (
        obs(
            OPEN_PAST_DUE,
            IN_DUNNING.model_copy(update={"dunning_campaign_started_at": A + timedelta(hours=5)}),
            RUNNING,
        ),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A + timedelta(hours=5)),
        [("end_campaign", "resolved", "superseded"), ("start_campaign", A + timedelta(hours=5))],
    ),
    "bad debt stays bad debt: no new campaign for the same open invoice": (
        obs(
            OPEN_PAST_DUE,
            ProjectionView(
                status="canceled", entitlement="canceled", last_outcome="exhausted", last_campaign_started_at=A
            ),
            RUNNING.model_copy(update={"outcome": "exhausted", "entitlement": "canceled"}),
            (ENTERED,),
        ),
        Desired(status="canceled", entitlement="canceled", campaign=False, anchor=None),
        [],
    ),
    "bad debt paid at the provider goes through pay-bad-debt, not recompute": (
        obs(
            PAID,
            ProjectionView(
                status="unpaid", entitlement="canceled", last_outcome="exhausted", last_campaign_started_at=A
            ),
            None,
            (ENTERED,),
        ),
        Desired(status="unpaid", entitlement="canceled", campaign=False, anchor=None),
        [],
    ),
    "a campaign that ended recovered is not restarted while the provider lags": (
        obs(
            OPEN_PAST_DUE,
            ProjectionView(status="active", last_outcome="recovered", last_campaign_started_at=A),
            RUNNING.model_copy(update={"outcome": "recovered"}),
        ),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A),
        [],
    ),
    "the provider could not be read": (
        obs(None, ProjectionView(status="active", entitlement="restricted")),
        Desired(status="active", entitlement="restricted", campaign=False, anchor=None),
        [],
    ),
    "no projection row yet, past_due at the provider": (
        obs(OPEN_PAST_DUE, None),
        Desired(status="past_due", entitlement="full", campaign=True, anchor=A),
        [
            ("start_campaign", A),
            ("repair_projection", "status", "past_due"),
            ("repair_projection", "dunning_campaign_started_at", A),
        ],
    ),
}
DEFERRED = {
    "payment in flight (invoice just paid, campaign running)": "in-flight window",
    "the provider reports a payment processing": "processing",
    "bad debt paid at the provider goes through pay-bad-debt, not recompute": "pay-bad-debt",
    "a campaign that ended recovered is not restarted while the provider lags": "already ended",
    "the provider could not be read": "could not be read",
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    o, desired, actions = SCENARIOS[name]
    plan = reconcile(o, CFG, NOW)
    assert plan.desired == desired
    assert shape(plan) == actions
    if name in DEFERRED:
        assert DEFERRED[name] in (plan.deferred or "")
    else:
        assert plan.deferred is None
    assert reconcile(apply(o, plan), CFG, NOW).actions == ()


def test_reasons_and_drift_name_what_disagreed() -> None:
    o, _, _ = SCENARIOS["invoice paid behind the engine's back while a campaign runs"]
    plan = reconcile(o, CFG, NOW)
    end = plan.actions[0]
    assert "in_1 paid" in end.reason and "ends recovered" in end.reason
    assert end.drift == ("campaign.outcome", "provider.invoice_state")
    assert plan.drift == ("campaign.outcome", "projection.dunning_campaign_started_at", "projection.entitlement",
                          "projection.status", "provider.invoice_state")  # fmt: skip
    o, _, _ = SCENARIOS["a wrong entitlement in the store, campaign running"]
    (only,) = reconcile(o, CFG, NOW).actions
    assert only.drift == ("projection.entitlement", "campaign.entitlement")
    assert "holds entitlement canceled" in only.reason


def test_in_flight_plan_shows_what_it_withholds() -> None:
    o, _, _ = SCENARIOS["payment in flight (invoice just paid, campaign running)"]
    plan = reconcile(o, CFG, NOW)
    assert [a.kind for a in plan.withheld] == ["end_campaign", "repair_projection", "repair_projection"]
    assert (NOW + timedelta(minutes=25)).isoformat() in (plan.deferred or "")
    assert reconcile(o, CFG, NOW + timedelta(minutes=25)).actions == plan.withheld


def test_views_from_the_stores() -> None:
    row = Subscription(id="sub_1", customer_id="cus_1", provider="fake", status="past_due",
                       dunning_campaign_started_at=A, entitlement="restricted", decline_class="soft",
                       last_event_at=A, last_outcome=None, last_campaign_started_at=None)  # fmt: skip
    assert ProjectionView.of(row) == IN_DUNNING.model_copy(update={"entitlement": "restricted"})
    retries = [RetryRecord(key="r1", at=A, outcome="declined"), RetryRecord(key="r2", at=NOW, outcome="unconfirmed")]
    state = CampaignState(subscription_id="sub_1", customer_id="cus_1", campaign_started_at=A, stage="retrying",
                          entitlement="restricted", retries=retries)  # fmt: skip
    view = CampaignView.of(state)
    assert view.running and view.entitlement == "restricted" and view.payment_started_at == NOW


@settings(max_examples=200)
@given(observed_any)
def test_plans_and_observations_survive_json(o: Observed) -> None:
    """For the CLI, the HTTP answer and workflow payloads."""
    plan = reconcile(o, CFG, NOW)
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    assert Observed.model_validate_json(o.model_dump_json()) == o


def test_config_refuses_an_empty_window() -> None:
    with pytest.raises(ValidationError, match="in_flight_window"):
        ReconcileConfig(in_flight_window=timedelta(0))
    with pytest.raises(ValidationError, match="extra"):
        ReconcileConfig(window=5)  # type: ignore[call-arg]
