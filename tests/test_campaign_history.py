"""`dunning campaign history SUB`: why a customer got each email, without SQL. A whole
exhausted campaign on the time-skipping server; every Message-ID in the customer's mailbox
is in the history, with the step in words and the day it went out."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dunning.providers import fake_state
from starter.campaign_history import history, render
from tests.temporal_fixtures import running_worker

pytestmark = pytest.mark.asyncio


async def test_every_email_the_customer_got_is_explained(tenv, settings, store, new_sub, mailbox, monkeypatch) -> None:
    async with running_worker(tenv, settings, store) as client:
        sub = new_sub("hist")
        fake_state.set_card(store.engine, sub, "decline:insufficient_funds")
        await client.fail_payment(sub, "cus_hist", "ada@example.com", await client.now(), amount_due=1200,
                                  currency="usd", decline_class="soft")  # fmt: skip
        await client._handle(sub).result()
    lines = history(store.events(sub))
    received = [m["Message-ID"] for m in mailbox.messages()]
    assert len(received) == 3 and [ln.message_id for ln in lines if ln.message_id] == received
    text = render(lines)
    assert "campaign started" in text and "decline class soft, 1200 usd" in text
    assert "email sent: first notice" in text and "day     0" in text
    assert "result declined (soft decline insufficient_funds)" in text
    assert "entitlement full -> limited" in text and "campaign ended exhausted" in text
    assert "ada@example.com" not in text  # ids only (a Message-ID carries the sender domain)

    for var in [v for v in __import__("os").environ if v.startswith("DUNNING_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DUNNING_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("DUNNING_HOME", str(settings.home))
    from starter.cli import app

    out = CliRunner().invoke(app, ["campaign", "history", sub, "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert [r["message_id"] for r in rows if "message_id" in r] == received
    none = CliRunner().invoke(app, ["campaign", "history", "sub_never"])
    assert none.exit_code == 1 and "no ledger rows" in none.output


def test_days_are_the_engines_days() -> None:
    from datetime import UTC, datetime, timedelta

    from dunning.store.store import LedgerEvent

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    sent = LedgerEvent("dunning.step_sent", "s", "c", t0, "reminder", {"message_id": "<m@x>"}, t0 + timedelta(seconds=10))
    assert history([sent], day_seconds=2)[0].day == 5  # a dev stack's 2-second days
    assert history([sent])[0].day == round(10 / 86400, 2)
