"""Recompute's store write (dunning.store.recompute_writes) on both databases: the plan is
written only if the row still says what recompute observed; one ledger row per event.
And the fake provider's account as the simulate CLI and the engine's own calls change it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from dunning.contracts import BillingEvent, EventKind
from dunning.projection import decide
from dunning.providers import fake_account, fake_state
from dunning.providers.fake_actions import FakeProvider
from dunning.reconcile import Desired, Plan, ProjectionView, SetEntitlement
from dunning.store.recompute_writes import Changed, write_plan
from dunning.store.schema import subscriptions
from dunning.store.store import Store

AT = datetime(2026, 11, 1, tzinfo=UTC)


def _row(store: Store, sub: str) -> ProjectionView:
    store.apply_projection(BillingEvent(provider="fake", event_id=f"e_{sub}", event_type="payment_succeeded",
                                        kind=EventKind.payment_succeeded, occurred_at=AT, subscription_id=sub,
                                        customer_id="cus_1"), decide)  # fmt: skip
    row = store.get_subscription(sub)
    assert row is not None
    return ProjectionView.of(row)


def _plan(sub: str) -> Plan:
    fix = SetEntitlement(reason="r", drift=("projection.entitlement",), level="full")
    return Plan(subscription_id=sub, desired=Desired(status="active", entitlement="full", campaign=False, anchor=None),
                rule="r", actions=(fix,))  # fmt: skip


def _write(store: Store, sub: str, seen: ProjectionView, event_id: str = "ev1") -> bool:
    return write_plan(store, _plan(sub), seen, customer_id="cus_1", provider="fake", campaign_started_at=None,
                      event_id=event_id, source="support", at=AT)  # fmt: skip


def test_written_once_with_its_ledger_row(store: Store) -> None:
    seen = _row(store, "sub_w")
    with store.engine.begin() as conn:
        conn.execute(update(subscriptions).where(subscriptions.c.id == "sub_w").values(entitlement="limited"))
    seen = seen.model_copy(update={"entitlement": "limited"})
    assert _write(store, "sub_w", seen) is True
    assert store.get_subscription("sub_w").entitlement == "full"  # type: ignore[union-attr]
    rows = [e for e in store.events("sub_w") if e.type == "dunning.drift_detected"]
    assert len(rows) == 1 and rows[0].data == {"source": "support", "drift": ["projection.entitlement"],
                                               "actions": ["set_entitlement"], "event_id": "ev1"}  # fmt: skip
    with pytest.raises(Changed):  # the row now says full, not what was observed
        _write(store, "sub_w", seen, "ev2")


def test_a_change_since_the_observation_writes_nothing(store: Store) -> None:
    seen = _row(store, "sub_c")
    with store.engine.begin() as conn:  # a campaign's end, a webhook... after recompute looked
        conn.execute(update(subscriptions).where(subscriptions.c.id == "sub_c").values(status="past_due"))
    with pytest.raises(Changed, match="changed while recompute ran"):
        _write(store, "sub_c", seen)
    assert store.get_subscription("sub_c").status == "past_due"  # type: ignore[union-attr]
    assert [e for e in store.events("sub_c") if e.type == "dunning.drift_detected"] == []


def test_engine_calls_move_the_fake_account(store: Store) -> None:
    fake_account.update(store.engine, "sub_f", AT, status="past_due", invoice_id="in_1", invoice_state="open")
    provider = FakeProvider(store.engine, clock=lambda: AT + timedelta(days=1))
    fake_state.set_card(store.engine, "sub_f", "decline:insufficient_funds")
    provider.retry_charge("sub_f", "in_1", "k1")
    assert fake_account.get(store.engine, "sub_f").invoice_state == "open"  # type: ignore[union-attr]
    fake_state.set_card(store.engine, "sub_f", "succeed")
    provider.retry_charge("sub_f", "in_1", "k2")
    after = fake_account.get(store.engine, "sub_f")
    assert after is not None and (after.status, after.invoice_state) == ("active", "paid")
    provider.cancel_subscription("sub_f", "k3")
    assert fake_account.get(store.engine, "sub_f").status == "canceled"  # type: ignore[union-attr]
    provider.cancel_subscription("sub_unknown", "k4")  # a subscription the fake never saw gets no account
    assert fake_account.get(store.engine, "sub_unknown") is None
    with pytest.raises(ValueError, match="invoice_state 'settled'"):
        fake_account.update(store.engine, "sub_f", AT, invoice_state="settled")


def test_simulate_provider_changes_state_without_a_webhook(store: Store, db_url: str, tmp_path) -> None:
    from dunning.config import load_settings
    from starter.cli_simulate import simulate_app

    settings = load_settings(home=tmp_path, database_url=db_url, fake_webhook_secret="s", api_port=9)
    runner = CliRunner()
    out = runner.invoke(simulate_app, ["payment-failed", "sub_s", "--customer", "c", "--email", "a@example.com",
                                       "--amount", "990", "--no-webhook"], obj=settings)  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "no webhook sent" in out.output
    acct = fake_account.get(store.engine, "sub_s")
    assert acct is not None and (acct.status, acct.invoice_state, acct.amount_due) == ("past_due", "open", 990)
    assert store.get_subscription("sub_s") is None  # the engine heard nothing
    out = runner.invoke(simulate_app, ["provider", "sub_s", "--invoice", "paid", "--status", "active"], obj=settings)
    assert out.exit_code == 0 and "invoice" in out.output and "paid" in out.output
    out = runner.invoke(simulate_app, ["provider", "sub_s", "--invoice", "settled"], obj=settings)
    assert out.exit_code == 2 and "invoice_state 'settled'" in out.output
    out = runner.invoke(simulate_app, ["provider", "sub_s"], obj=settings)
    assert out.exit_code == 2 and "nothing to change" in out.output
