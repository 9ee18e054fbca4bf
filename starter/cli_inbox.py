"""`dunning inbox ...`: the webhook inbox's parked events (their dispatch kept failing).

    dunning inbox parked [--json]            provider, event id, subscription, attempts, reason
    dunning inbox retry PROVIDER EVENT_ID    parked -> received; the API's sweep dispatches it

Reads and writes the store only (no Temporal). See dunning.store.inbox_parking.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported when a command runs: `dunning --help` stays fast
    from dunning.config import Settings
    from dunning.store.store import Store

inbox_app = typer.Typer(help="The webhook inbox: parked events (dispatch kept failing).", no_args_is_help=True)


def _settings() -> Settings:
    from dunning.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _store(settings: Settings) -> Store:
    from dunning.store import availability
    from dunning.store.store import Store

    store = Store(settings.db_url)
    try:
        store.migrate()  # as every command that opens the store does
    except Exception as err:
        if not availability.is_unavailable(err):
            raise
        store.dispose()
        _fail(availability.describe(store, err))
    return store


@inbox_app.command("parked")
def inbox_parked(as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """List parked events: provider, event id, subscription, attempts, reason."""
    from dunning.store import inbox_parking

    with _store(_settings()) as store:
        rows = inbox_parking.parked(store)
    if as_json:
        keys = ("provider", "event_id", "event_type", "subscription_id", "occurred_at", "attempts", "reason")
        typer.echo(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], default=str, indent=2))
        return
    if not rows:
        typer.echo("no parked events")
        return
    for r in rows:
        typer.echo(f"{r.provider}  {r.event_id}  {r.subscription_id or '-'}  attempts={r.attempts}  {r.reason}")


@inbox_app.command("retry")
def inbox_retry(provider: str = typer.Argument(...), event_id: str = typer.Argument(...)) -> None:
    """Put a parked event back to 'received': the API's sweep dispatches it again."""
    from dunning.store import inbox_parking

    with _store(_settings()) as store:
        found = inbox_parking.retry(store, provider, event_id)
    if not found:
        _fail(f"no parked event {provider}/{event_id} (see `dunning inbox parked`)")
    typer.echo(f"{provider}/{event_id}: back to received; the API's sweep dispatches it")
