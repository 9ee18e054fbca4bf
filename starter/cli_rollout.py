"""`dunning rollout report [--since ISO] [--limit N] [--json]`: what shadow campaigns
would have done, judged against the provider (dunning.rollout_report). Exit 2 for a bad
argument or config."""

from __future__ import annotations

import json

import typer

rollout_app = typer.Typer(help="The staged rollout: judge shadow campaigns before going live.", no_args_is_help=True)


@rollout_app.command("report")
def report(
    since: str = typer.Option(None, "--since", help="Only campaigns begun since (ISO 8601 with a zone)"),
    limit: int = typer.Option(1000, "--limit", min=1, max=100_000, help="At most this many campaigns, newest first"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Shadow decisions against what the provider saw: false positives before going live."""
    from dunning.rollout_report import render
    from dunning.store.store import Store
    from starter.cli import settings_or_exit
    from starter.cli_simulate import parse_aware_time
    from starter.rollout_report import gather

    start = parse_aware_time(since, "--since")
    settings = settings_or_exit()
    with Store.open(settings.db_url) as store:
        found = gather(settings, store, start, limit)
    typer.echo(json.dumps(found.as_dict(), indent=2) if as_json else render(found))
