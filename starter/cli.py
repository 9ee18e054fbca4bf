"""The `dunning` command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback

import typer

from dunning.config import ConfigError, Settings, load_settings

app = typer.Typer(help="Dunning engine on Temporal.", no_args_is_help=True, add_completion=False)
campaign_app = typer.Typer(help="Start, recover and inspect campaigns.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


def _simulate_app() -> typer.Typer:
    from starter.cli_simulate import simulate_app
    from starter.fake_cli import calls_command, set_card_command

    @simulate_app.callback()
    def _load(ctx: typer.Context) -> None:
        from starter.dev import with_dev_secrets

        if ctx.obj is None:  # a caller (a test, an embedding app) may pass its own settings
            ctx.obj = with_dev_secrets(settings_or_exit())

    @simulate_app.command("set-card")
    def set_card(
        ctx: typer.Context,
        subscription: str = typer.Argument(...),
        outcome: str = typer.Option(..., "--outcome", help="succeed | decline:CODE (what the next engine charge returns)"),
    ) -> None:
        """Script the fake provider's card for a subscription."""
        try:
            typer.echo(set_card_command(ctx.obj, subscription, outcome))
        except ValueError as err:
            fail(str(err), 2)

    @simulate_app.command("calls")
    def calls(ctx: typer.Context, subscription: str = typer.Argument(None)) -> None:
        """Every call the engine made to the fake provider (charge, cancel)."""
        typer.echo(calls_command(ctx.obj, subscription))

    return simulate_app


app.add_typer(_simulate_app(), name="simulate")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def run_client(coro) -> None:
    """Run a short Temporal client command and exit at once: the SDK's background threads
    can abort the interpreter during normal shutdown (temporalio/sdk-python#300)."""
    code = 0
    try:
        asyncio.run(coro)
    except typer.Exit as err:
        code = err.exit_code
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError):  # e.g. `| head`: still exit without the SDK's shutdown abort
            code = code or 1
    os._exit(code)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


async def _client(settings: Settings):
    from starter.client import DunningClient

    try:
        return await DunningClient.connect(settings)
    except RuntimeError as err:
        fail(f"cannot reach Temporal at {settings.temporal_address}: {err}")


def run_service(main, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a long-lived command (worker, api, dev) until it stops itself: SIGTERM/SIGINT
    stop it gracefully (worker/shutdown.py), then exit 0 at once, as run_client does."""
    code = 0
    try:
        asyncio.run(main)
    except KeyboardInterrupt:  # Ctrl-C before the command installed its own handlers
        pass
    except errors as err:
        typer.echo(f"error: {err}", err=True)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    os._exit(code)


@app.command()
def worker() -> None:
    """Run the campaign worker (Temporal from DUNNING_TEMPORAL_*); SIGTERM/SIGINT stop it gracefully."""
    from worker.app import run_worker

    settings = settings_or_exit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_service(run_worker(settings), errors=(RuntimeError,))


@app.command()
def doctor() -> None:
    """Check config, database and Temporal; warn about double customer emails."""
    from starter.doctor import doctor as run_doctor

    code = run_doctor(settings_or_exit())
    sys.stdout.flush()
    os._exit(code)  # see run_client


@app.command()
def api() -> None:
    """Run the HTTP API (webhooks, payment-recovered, attention) on DUNNING_API_PORT; SIGTERM/SIGINT stop it gracefully."""
    from dunning.store.store import Store

    settings = settings_or_exit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = Store.open(settings.db_url)

    async def client_factory():
        from starter.client import DunningClient

        return await DunningClient.connect(settings, store)

    from starter.api_server import run_api

    run_service(run_api(settings, store, client_factory), errors=(OSError,))


@app.command()
def dev() -> None:
    """Run everything locally: Temporal dev server + UI, worker, API, SMTP outbox."""
    from starter.dev import run_dev

    settings = settings_or_exit()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("dunning.campaign").setLevel(logging.INFO)  # one line per campaign event, ids only
    run_service(run_dev(settings, api=_api_runner()), errors=(RuntimeError,))


def _api_runner():
    from starter.api_server import serve_api

    async def run(settings, store, client_factory, stop=None):
        await serve_api(settings, store, client_factory, settings.api_host, settings.api_port, stop=stop)

    return run


@campaign_app.command("start")
def campaign_start(
    subscription: str = typer.Argument(..., help="Subscription id"),
    customer: str = typer.Option(..., "--customer", help="Customer id"),
    email: str = typer.Option(..., "--email", help="Customer email (stored, never in the workflow)"),
    failed_at: str = typer.Option(None, "--failed-at", help="Provider time of the failure (ISO 8601); default now"),
    name: str = typer.Option(None, "--name", help="Customer name for the emails"),
) -> None:
    """Start a campaign (a running one for this subscription is returned, not duplicated)."""
    settings = settings_or_exit()
    if not settings.campaign.enabled:
        fail("campaigns are disabled (campaign.enabled = false / DUNNING_CAMPAIGN__ENABLED)", 2)
    if "@" not in email:
        fail(f"--email {email!r}: not an email address", 2)
    from starter.cli_simulate import parse_aware_time

    when = parse_aware_time(failed_at, "--failed-at")

    async def go():
        client = await _client(settings)
        received = await client.fail_payment(subscription, customer, email, when, name=name)
        what = f"{received.action or 'duplicate'}: {received.result}"
        if received.result in ("started", "updated"):
            typer.echo(f"campaign dunning-{subscription} running ({what})")
        else:
            typer.echo(f"campaign dunning-{subscription}: nothing started ({what})")

    run_client(go())


def _reason_code(value: str) -> str:
    from dunning import reasons

    try:
        return reasons.check(value)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@campaign_app.command("recover")
def campaign_recover(
    subscription: str = typer.Argument(...),
    reason: str = typer.Option(
        "payment_succeeded", "--reason", callback=_reason_code,
        help="payment_succeeded | retry_succeeded | card_updated | paid_out_of_band | invoice_paid | manual_adjustment",
    ),  # fmt: skip
    key: str = typer.Option(None, "--idempotency-key", help="A repeat with the same key answers the same"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """The payment came in: through the receive path; prints what the campaign really did."""
    from starter.client import EventParked, UnknownSubscription

    settings = settings_or_exit()

    async def go():
        client = await _client(settings)
        try:
            answer = await client.payment_recovered(subscription, reason, key)
        except (UnknownSubscription, EventParked, ValueError) as err:
            fail(str(err))
        if as_json:
            typer.echo(answer.model_dump_json())
            return
        typer.echo(answer.status + (f" ({answer.outcome})" if answer.status == "already_ended" else ""))

    run_client(go())


@campaign_app.command("status")
def campaign_status(
    subscription: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Show the latest campaign of a subscription, running or finished."""
    from starter.client import UnknownSubscription

    settings = settings_or_exit()

    async def go():
        client = await _client(settings)
        try:
            state = await client.status(subscription)
        except UnknownSubscription as err:
            if as_json:
                typer.echo(json.dumps({"subscription_id": subscription, "error": "no_campaign", "message": str(err)}))
                raise typer.Exit(1) from None
            fail(str(err))
        print_state(state, as_json)

    run_client(go())


@campaign_app.command("history")
def campaign_history(
    subscription: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Every ledger row of a subscription in words: why each email went out (with its
    Message-ID), retries, consequences, skips, the end. Reads the database only."""
    from dunning.store.store import Store
    from starter.campaign_history import history, render

    settings = settings_or_exit()
    with Store.open(settings.db_url) as store:
        lines = history(store.events(subscription), settings.day_seconds)
    if as_json:
        typer.echo(json.dumps([line.as_dict() for line in lines], indent=2))
    elif not lines:
        fail(f"subscription {subscription!r} has no ledger rows (no campaign ever began)")
    else:
        typer.echo(render(lines))


def print_state(state, as_json: bool) -> None:
    if as_json:
        typer.echo(state.model_dump_json(indent=2))
        return
    typer.echo(f"subscription   {state.subscription_id} (customer {state.customer_id})")
    typer.echo(f"campaign since {state.campaign_started_at.isoformat()}")
    typer.echo(f"stage          {state.stage}")
    typer.echo(f"outcome        {state.outcome}{': ' + state.reason if state.reason else ''}")
    typer.echo(f"steps sent     {', '.join(state.steps_sent) or '-'}")
    typer.echo(f"decline class  {state.decline_class or '-'}")
    typer.echo(f"entitlement    {state.entitlement}")
    for r in state.retries:
        typer.echo(f"retry          {r.key} at {r.at.isoformat()}: {r.outcome}{' (' + r.decline_class + ')' if r.decline_class else ''}")
    if state.terminal_action:
        typer.echo(f"terminal       {state.terminal_action}")
    if state.steps_unconfirmed:
        typer.echo(f"UNCONFIRMED    {', '.join(state.steps_unconfirmed)} (claimed, not confirmed sent)")
    if state.steps_failed:
        typer.echo(f"FAILED         {', '.join(state.steps_failed)} (not sent; see the Temporal UI)")
    if state.next_step:
        typer.echo(f"next           {state.next_step.key} at {state.next_step.at.isoformat()}")


def _recompute() -> None:
    from starter.cli_recompute import recompute_command

    app.command("recompute")(recompute_command)


_recompute()


def _schedules() -> None:
    from starter.cli_schedules import schedules_app

    app.add_typer(schedules_app, name="schedules")


_schedules()


def _rollout() -> None:
    from starter.cli_rollout import rollout_app

    app.add_typer(rollout_app, name="rollout")


_rollout()


def _report() -> None:
    from starter.cli_report import report_command

    app.command("report")(report_command)


_report()


def _campaigns() -> None:
    from starter.cli_campaigns import list_command

    campaign_app.command("list")(list_command)


_campaigns()


def _inbox_app() -> typer.Typer:
    from starter.cli_inbox import inbox_app

    return inbox_app


app.add_typer(_inbox_app(), name="inbox")


outbound_app = typer.Typer(help="Outbound events to host apps (the durable outbox).", no_args_is_help=True)
app.add_typer(outbound_app, name="outbound")


@outbound_app.command("list")
def outbound_list(
    pending: bool = typer.Option(False, "--pending", help="Only events not delivered yet"),
    limit: int = typer.Option(100, "--limit", min=1, help="The newest N events"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """List outbound events: status, attempts, next attempt, last error (oldest first)."""
    from dunning.store import outbox
    from dunning.store.store import Store

    with Store.open(settings_or_exit().db_url) as store:
        rows = outbox.list_events(store, pending_only=pending, limit=limit)
        counts = outbox.outbox_counts(store)
    if as_json:
        keys = ("event_id", "type", "subscription_id", "status", "attempts", "created_at", "next_attempt_at",
                "delivered_at", "last_error", "payload")  # fmt: skip
        typer.echo(json.dumps([{k: getattr(r, k) for k in keys} for r in rows], default=str, indent=2))
        return
    age = counts["oldest_pending_age_seconds"]
    typer.echo(f"{counts['pending']} pending{f' (oldest {age:.0f} s)' if age is not None else ''}, "
               f"{counts['delivered']} delivered")  # fmt: skip
    for r in rows:
        if r.status == "delivered" and r.delivered_at is not None:
            when = f"delivered {r.delivered_at.isoformat()}"
        else:
            when = f"next {r.next_attempt_at.isoformat()}" + (f"  last error: {r.last_error}" if r.last_error else "")
        typer.echo(f"{r.status:9}  {r.event_id}  attempts={r.attempts}  {when}")


def _bad_debt_app() -> typer.Typer:
    from starter.cli_bad_debt import bad_debt_app

    return bad_debt_app


app.add_typer(_bad_debt_app(), name="bad-debt")


def main() -> None:  # pragma: no cover
    app(prog_name="dunning")


if __name__ == "__main__":  # pragma: no cover
    main()
