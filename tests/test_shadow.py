"""Shadow mode on the time-skipping server, both databases: campaigns run their whole
timeline and record each action they would have taken, and do none of it. What a user
checks: the SMTP sink, the fake provider's recorded calls, the entitlement the host app
reads, bad debt, the outbox, and the `dunning.shadow_action` ledger rows."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from dunning.providers import fake_state
from dunning.rollout import RolloutSettings, in_slice
from dunning.store import shadow
from dunning.store.entitlements import entitlement_of
from dunning.store.schema import outbound_events
from dunning.store.store import Store
from tests.temporal_fixtures import ledger, running_worker

pytestmark = pytest.mark.asyncio


def _shadow(settings, **gate):
    return settings.model_copy(update={"rollout": RolloutSettings(mode="shadow", **gate),
                                       "outbound_urls": ["http://127.0.0.1:9/hook"], "outbound_secret": "s"})  # fmt: skip


async def test_twenty_shadow_campaigns_act_on_nothing_and_record_everything(tenv, settings, store: Store, new_sub,
                                                                            mailbox) -> None:  # fmt: skip
    gated = _shadow(settings)
    async with running_worker(tenv, gated, store) as client:
        subs = [new_sub(f"shadow{n}") for n in range(20)]
        at = await client.now()
        for s in subs:
            fake_state.set_card(store.engine, s, "decline:insufficient_funds")
            assert (await client.fail_payment(s, f"cus_{s}", "ada@example.com", at, amount_due=900)).result == "started"
        states = [await client._handle(s).result() for s in subs]

    assert mailbox.messages() == []  # 0 emails
    assert [c for s in subs for c in fake_state.calls(store.engine, s)] == []  # 0 provider calls of any kind
    plan = gated.plan("fake")
    emails = [st.key for st in plan.steps]
    for s, state in zip(subs, states, strict=True):
        assert state.outcome == "exhausted" and state.terminal_action == f"shadow: {plan.on_exhaustion}"
        rows = ledger(store, s, shadow.TYPE)
        actions = [(r.data["action"], r.step_key) for r in rows]
        assert [k for a, k in actions if a == "email"] == emails
        assert [a for a, _ in actions].count("consequence") == len([r for r in plan.ladder if r.level != "full"])
        assert [a for a, _ in actions].count("charge") == len(state.retries) > 0
        assert actions[-2][0] == plan.on_exhaustion and actions[-1] == ("end", shadow.END_KEY)
        assert rows[-1].data["outcome"] == "exhausted"
        found = entitlement_of(store, s, "m")
        assert found is not None and found.entitlement == "full"  # never restricted
        assert ledger(store, s, "bad_debt.entered") == [] and ledger(store, s, "dunning.exhausted") == []
        assert ledger(store, s, "dunning.campaign_started")[0].data == {"provider": "fake", "amount_due": 900, "mode": "shadow"}
    with store.engine.connect() as conn:
        queued = conn.execute(select(func.count()).select_from(outbound_events)
                              .where(outbound_events.c.subscription_id.in_(subs))).scalar_one()  # fmt: skip
    assert queued == 0  # the host app is told nothing
    assert {c.subscription_id for c in shadow.campaigns(store)} >= set(subs)


async def test_a_payment_ends_a_shadow_campaign_recovered(tenv, settings, store: Store, new_sub, mailbox) -> None:
    async with running_worker(tenv, _shadow(settings), store) as client:
        s = new_sub("shadow_paid")
        await client.fail_payment(s, f"cus_{s}", "ada@example.com", await client.now())
        answer = await client.payment_recovered(s, "card_updated", "pay-1")
        assert answer.status == "recovered"
        state = await client._handle(s).result()
    assert state.outcome == "recovered" and mailbox.messages() == []
    assert ledger(store, s, shadow.TYPE)[-1].data["outcome"] == "recovered"
    row = store.get_subscription(s)
    assert row is not None and (row.status, row.entitlement, row.last_outcome) == ("active", "full", "recovered")


async def test_changing_the_gate_never_changes_a_running_campaign(tenv, settings, store: Store, new_sub,
                                                                  mailbox) -> None:  # fmt: skip
    gated = _shadow(settings)
    s = new_sub("shadow_gate")
    async with running_worker(tenv, gated, store) as client:
        await client.fail_payment(s, f"cus_{s}", "ada@example.com", await client.now())
        for _ in range(200):  # the first activity has read the gate
            if ledger(store, s, "dunning.campaign_started"):
                break
            await asyncio.sleep(0.02)
        gated.rollout = RolloutSettings(mode="live")  # the operator switches to live: every activity sees it
        state = await client._handle(s).result()
    assert state.outcome == "exhausted" and mailbox.messages() == []  # the running campaign stayed shadow
    assert fake_state.calls(store.engine, s) == []
    assert ledger(store, s, "bad_debt.entered") == []


async def test_shadow_for_a_slice_starts_shadow_campaigns_only_inside_it(tenv, settings, store: Store, new_sub,
                                                                         mailbox) -> None:  # fmt: skip
    gated = _shadow(settings, percent=50)
    async with running_worker(tenv, gated, store) as client:
        subs = [new_sub(f"shadow_half{n}") for n in range(12)]
        at = await client.now()
        results = {s: (await client.fail_payment(s, f"cus_{s}", "ada@example.com", at)).result for s in subs}
        inside = {s for s in subs if in_slice(gated.rollout, s)}
        assert {s for s, r in results.items() if r == "started"} == inside
        for s in inside:
            await client.payment_recovered(s, "card_updated", f"k-{s}")
            await client._handle(s).result()
    assert mailbox.messages() == []



async def test_rollout_report_judges_shadow_cancels_against_the_provider(tenv, settings, store: Store, new_sub,
                                                                         mailbox) -> None:  # fmt: skip
    from dunning.providers import fake_account
    from starter.rollout_report import gather

    gated = _shadow(settings)
    async with running_worker(tenv, gated, store) as client:
        at = await client.now()
        unpaid, paid_later, payer = new_sub("rr_unpaid"), new_sub("rr_paid_later"), new_sub("rr_payer")
        for s in (unpaid, paid_later, payer):
            fake_account.update(store.engine, s, at, status="past_due", invoice_id=f"in_{s}", invoice_state="open")
            await client.fail_payment(s, f"cus_{s}", "ada@example.com", at)
        await client.payment_recovered(payer, "card_updated", "rr-pay")
        for s in (unpaid, paid_later, payer):
            await client._handle(s).result()
    fake_account.update(store.engine, paid_later, at, status="active", invoice_state="paid")  # paid after all

    found = gather(gated, store).as_dict()
    ours = {unpaid, paid_later, payer}
    assert set(found["false_positives"]) & ours == {paid_later}  # type: ignore[arg-type]
    mine = gather(gated, store, since=at)
    assert mine.verdicts["true_positive"] >= 1 and mine.verdicts["recovered"] >= 1
    assert mine.false_positive_rate is not None and 0 < mine.false_positive_rate < 1
