"""The failure's start races the payment: the receive path commits the failure's decision,
and before Temporal has the start the payment service's recovery is received and
decided (no campaign runs yet, so it is recorded in the projection only). The campaign
then starts, as its committed decision says, and its first effect finds the subscription
paid: no email, no charge, no restriction; it ends recovered. SQLite and PostgreSQL."""

from __future__ import annotations

from dunning.store.entitlements import entitlement_of
from starter.client import DunningClient
from tests.temporal_fixtures import ledger
from tests.test_races import cancels, charges


async def test_a_payment_received_before_the_failure_reaches_temporal_stops_every_effect(
    dunning, new_sub, store, mailbox, monkeypatch
):
    sub = new_sub("sub_start_race")
    paid: list[str] = []
    attach = DunningClient.attach

    async def pay_first(self, event, anchor):  # the failure's decision is committed; Temporal has nothing yet
        paid.append((await self.payment_recovered(sub, "paid_out_of_band", "start-race")).status)
        return await attach(self, event, anchor)

    monkeypatch.setattr(DunningClient, "attach", pay_first)
    handle = await dunning.start_campaign(sub, f"cus_{sub}", "race@example.com", decline_class="soft")
    state = await handle.result()

    assert paid == ["no_campaign"]  # what the payment service was told: no campaign was running
    assert state.outcome == "recovered" and state.reason.startswith("superseded")
    assert mailbox.steps() == [] and charges(store, sub) == [] and cancels(store, sub) == []
    assert ledger(store, sub, "dunning.consequence_changed") == [] and ledger(store, sub, "dunning.step_sent") == []
    ent = entitlement_of(store, sub)
    assert ent is not None and (ent.status, ent.entitlement) == ("active", "full")
