"""`dunning simulate` commands for the fake provider, as plain functions returning the text
to print (the Typer app wires them). ValueError (e.g. a bad outcome) names what was wrong.

    set_card_command(settings, "sub_1", "decline:insufficient_funds")
    calls_command(settings, "sub_1")     # or None for every subscription
"""

from __future__ import annotations

from dunning.config import Settings
from dunning.providers import fake_state
from dunning.store.store import Store

COLUMNS = ("id", "at", "subscription", "action", "idempotency key", "result")


def set_card_command(settings: Settings, subscription_id: str, outcome: str) -> str:
    fake_state.validate_outcome(outcome)  # before opening (and migrating) the database
    with Store.open(settings.db_url) as store:
        fake_state.set_card(store.engine, subscription_id, outcome)
    then = "succeed" if outcome == fake_state.SUCCEED else f"decline with {outcome.removeprefix('decline:')}"
    return f"fake card for {subscription_id}: charges now {then}"


def calls_command(settings: Settings, subscription_id: str | None = None) -> str:
    with Store.open(settings.db_url) as store:
        recorded = fake_state.calls(store.engine, subscription_id)
    if not recorded:
        return f"no fake provider calls{f' for {subscription_id}' if subscription_id else ''}"
    rows = [
        (str(c.id), c.at.isoformat(timespec="seconds"), c.subscription_id, c.action, c.idempotency_key, c.result)
        for c in recorded
    ]
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [COLUMNS, *rows]]
    return "\n".join(lines)
