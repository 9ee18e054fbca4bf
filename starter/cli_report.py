"""`dunning report [--since ISO] [--until ISO] [--html FILE] [--json]`: recovered vs lost
for the failed payments (campaigns) begun in [since, until), from the ledger alone
(definitions: dunning.analytics). Default period: the last 28 days up to now. Without
--html or --json: a short text summary. Exit 2 for a bad argument or config."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import typer

from dunning.analytics_model import RecoveryReport

DEFAULT_DAYS = 28


def summary(r: RecoveryReport) -> str:
    """The text summary: totals, amounts per currency, and the rate per cohort week and path."""
    from starter.report_html import money_list, pct

    median = "—" if r.median_days_to_recovery is None else f"{r.median_days_to_recovery:g} days"
    lines = [
        f"Recovery report: failed payments begun {r.since.isoformat()} .. {r.until.isoformat()}",
        f"campaigns      {r.campaigns} (in progress {r.in_progress}, without amount {r.amount_unknown})",
        f"recovered      {r.recovered}  rate {pct(r.recovery_rate)}  median {median} to recovery",
        f"lost           {r.lost} (exhausted {r.exhausted}, resolved {r.resolved})",
        f"failed amount  {money_list(r.failed_amount)}",
        f"recovered      {money_list(r.recovered_amount)}",
        f"lost amount    {money_list(r.lost_amount)}",
        "by week        " + ", ".join(f"{g.key} {pct(g.rate)} ({g.recovered}/{g.campaigns})" for g in r.by_cohort_week),
        "by path        " + (", ".join(f"{p.path} {p.recovered}" for p in r.by_path if p.recovered) or "—"),
        f"bad debt       entered {r.bad_debt.entered}, exited {r.bad_debt.exited}",
    ]
    return "\n".join(lines)


def report_command(
    since: str = typer.Option(None, "--since", help="Campaigns begun at or after (ISO 8601 with a zone); default: until - 28 days"),
    until: str = typer.Option(None, "--until", help="Campaigns begun before (ISO 8601 with a zone); default: now"),
    html: Path = typer.Option(None, "--html", help="Write a self-contained HTML report with charts to FILE", metavar="FILE"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:  # fmt: skip
    """Recovered vs lost: recovery rate, amounts per currency, days to recovery, splits."""
    from dunning.store.ledger_analytics import recovered_vs_lost
    from dunning.store.store import Store
    from starter.cli import settings_or_exit
    from starter.cli_simulate import parse_aware_time
    from starter.report_html import write

    end = parse_aware_time(until, "--until") or datetime.now(UTC)
    start = parse_aware_time(since, "--since") or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        typer.echo(f"error: --since {start.isoformat()} must be before --until {end.isoformat()}", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit()
    with Store.open(settings.db_url) as store:
        found = recovered_vs_lost(store, start, end)
    if html is not None:
        try:
            write(found, html)
        except OSError as err:
            typer.echo(f"error: --html {str(html)!r}: {err.strerror or err}", err=True)
            raise typer.Exit(2) from None
        if not as_json:
            typer.echo(f"wrote {html}")
    if as_json:
        typer.echo(json.dumps(found.model_dump(mode="json"), indent=2))
    elif html is None:
        typer.echo(summary(found))
