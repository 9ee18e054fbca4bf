"""`dunning bad-debt ...`: the guarded pay-bad-debt path (starter.bad_debt), apart from
collection (no Temporal, no campaign).

    dunning bad-debt pay SUB --idempotency-key K [--reason CODE] [--json]

Exit 0 when paid (or a repeat of a paid key), 1 when refused or declined (the message
names why), 2 for a bad argument or config.
"""

from __future__ import annotations

import json

import typer

from dunning import reasons

bad_debt_app = typer.Typer(help="Bad debt left by exhausted campaigns: pay it (guarded).", no_args_is_help=True)


@bad_debt_app.command("pay")
def pay(
    subscription: str = typer.Argument(..., help="Subscription id"),
    idempotency_key: str = typer.Option(..., "--idempotency-key", help="The same key again gives the same answer"),
    reason: str = typer.Option(reasons.DEFAULT, "--reason", help=f"One of: {', '.join(reasons.REASONS)}"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (with the HTTP-like status)"),
) -> None:
    """Charge a subscription's bad debt once: only in bad debt, never while a payment is in
    flight or a campaign runs; on success it leaves bad debt (entitlement full, active)."""
    from dunning.store import availability
    from dunning.store.store import Store
    from starter.bad_debt import pay_bad_debt
    from starter.cli import settings_or_exit

    try:
        reasons.check(reason)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--reason") from None
    settings = settings_or_exit()
    store = Store(settings.db_url)
    try:
        with store:
            store.migrate()  # as every command that opens the store does
            answer = pay_bad_debt(settings, store, subscription, idempotency_key, reason)
    except Exception as err:
        if not availability.is_unavailable(err):
            raise
        typer.echo(f"error: {availability.describe(store, err)}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"http_status": answer.status, **answer.body}, default=str, indent=2))
    elif answer.ok:
        body = answer.body
        again = " (repeat: the first answer, nothing charged again)" if body.get("duplicate") else ""
        typer.echo(f"paid           {subscription}: left bad debt after {body.get('days_in_bad_debt')} day(s){again}")
        typer.echo(f"entitlement    {body.get('entitlement')}")
        if body.get("reference"):
            typer.echo(f"reference      {body['reference']}")
    else:
        again = " (repeat of the first answer)" if answer.body.get("duplicate") else ""
        typer.echo(f"error: {answer.body.get('error')}: {answer.body.get('message')}{again}", err=True)
    if not answer.ok:
        raise typer.Exit(1)
