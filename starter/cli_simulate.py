"""`dunning simulate ...`: post signed fake-provider events to the running API.

    dunning simulate payment-failed SUB --customer CUS --email ADDR [--decline-code CODE]
    dunning simulate payment-succeeded SUB
    dunning simulate payment-method-updated SUB
    dunning simulate provider SUB [--status S] [--invoice STATE] [--processing/--settled]

The fake provider keeps its own word on each subscription (dunning.providers.fake_account),
as a real provider does: payment-failed makes it past due with a new open invoice,
payment-succeeded pays that invoice, both before the webhook is sent. `--no-webhook` changes
the provider and sends nothing (a dropped webhook); `provider` changes it behind the
engine's back (e.g. `--invoice paid` without a webhook). Recompute and the drift sweep read it.

Every command takes `--api URL` and `--at ISO8601` (the provider's time of the event,
default now: a backdated failure anchors the campaign in the past).

Each event is built and signed exactly as the fake provider expects (build_fake_event +
sign_fake with DUNNING_FAKE_WEBHOOK_SECRET) and posted to `--api` (default
http://127.0.0.1:<api_port>/webhooks/fake); the API's answer is printed. Exit 0 on a 2xx
answer, 1 otherwise.

Settings come from `ctx.obj` when the parent command put a Settings there, else from the
environment and config file.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import typer

from dunning.config import ConfigError, Settings, load_settings
from dunning.providers.fake import SECRET_ENV, build_fake_event, sign_fake

simulate_app = typer.Typer(help="Post signed fake-provider events to the running API.", no_args_is_help=True)

API_OPTION = typer.Option(None, "--api", help="API base URL (default http://127.0.0.1:<api_port>)")
AT_OPTION = typer.Option(None, "--at", help="Provider time of the event, ISO 8601 with a zone (default now)")
WEBHOOK_OPTION = typer.Option(True, "--webhook/--no-webhook", help="--no-webhook: change the provider, send nothing")


def _settings(ctx: typer.Context) -> Settings:
    if isinstance(ctx.obj, Settings):
        return ctx.obj
    try:
        return load_settings()
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def post_fake_event(
    settings: Settings, kind: str, subscription_id: str, api: str | None = None, **data: Any
) -> httpx.Response:
    """Build, sign and post one fake event; returns the API's response."""
    if not settings.fake_webhook_secret:
        raise ValueError(f"{SECRET_ENV} is not set: the fake provider is disabled (set it here and for the API)")
    body = json.dumps(build_fake_event(kind, subscription_id, **data)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Dunning-Signature": sign_fake(body, settings.fake_webhook_secret, int(time.time())),
    }
    base = (api or f"http://127.0.0.1:{settings.api_port}").rstrip("/")
    return httpx.post(f"{base}/webhooks/fake", content=body, headers=headers, timeout=30)


def parse_aware_time(value: str | None, option: str = "--at") -> datetime | None:
    """An ISO 8601 time with a zone from a CLI option; a bad one exits 2 naming the option."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        typer.echo(f"error: {option} {value!r}: give an ISO 8601 time with a zone, e.g. 2026-11-22T09:30:00Z", err=True)
        raise typer.Exit(2)
    return parsed


def _account(settings: Settings, kind: str, subscription_id: str, at: datetime, data: dict[str, Any]) -> None:
    """The fake provider's own state changes first, as a real provider's does before it
    sends the webhook."""
    from dunning.providers import fake_account
    from dunning.store.store import Store

    with Store.open(settings.db_url) as store, store.engine.begin() as conn:
        if kind == "payment_failed":
            invoice = data.get("invoice_id") or f"in_fake_{uuid.uuid4().hex[:12]}"
            data["invoice_id"] = invoice
            fake_account.failed(conn, subscription_id, at, invoice, data.get("amount_due"))
        elif kind == "payment_succeeded":
            fake_account.paid(conn, subscription_id, at)


def _send(
    ctx: typer.Context,
    kind: str,
    subscription_id: str,
    api: str | None,
    at: str | None,
    webhook: bool = True,
    **data: Any,
) -> None:
    settings = _settings(ctx)
    base = api or f"http://127.0.0.1:{settings.api_port}"
    created = parse_aware_time(at)
    try:
        _account(settings, kind, subscription_id, created or datetime.now(UTC), data)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if not webhook:
        typer.echo(f"fake provider: {kind} for {subscription_id} recorded; no webhook sent")
        return
    try:
        response = post_fake_event(settings, kind, subscription_id, api, created=created, **data)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except httpx.HTTPError as err:
        typer.echo(f"error: cannot reach the API at {base} ({type(err).__name__}): is `dunning api` running?", err=True)
        raise typer.Exit(1) from None
    try:
        shown = json.dumps(response.json())
    except ValueError:
        shown = response.text
    typer.echo(f"{response.status_code} {shown}")
    if not response.is_success:
        raise typer.Exit(1)


@simulate_app.command("payment-failed")
def payment_failed(
    ctx: typer.Context,
    subscription: str = typer.Argument(..., help="Subscription id"),
    customer: str = typer.Option(..., "--customer", help="Customer id"),
    email: str = typer.Option(..., "--email", help="Customer email (goes to the customers table only)"),
    decline_code: str = typer.Option(None, "--decline-code", help="Stripe-style decline code, e.g. insufficient_funds"),
    name: str = typer.Option(None, "--name", help="Customer name"),
    amount: int = typer.Option(None, "--amount", min=0, help="Amount due, in minor units"),
    currency: str = typer.Option(None, "--currency", help="ISO 4217 code of the amount, e.g. usd"),
    plan: str = typer.Option(None, "--plan", help="The provider's plan / price id"),
    api: str = API_OPTION,
    at: str = AT_OPTION,
    webhook: bool = WEBHOOK_OPTION,
) -> None:
    """A payment failed: starts a campaign (or updates the running one)."""
    if "@" not in email:
        typer.echo(f"error: --email {email!r}: not an email address", err=True)
        raise typer.Exit(2)
    _send(ctx, "payment_failed", subscription, api, at, webhook, customer_id=customer, customer_email=email,
          customer_name=name, decline_code=decline_code, amount_due=amount, currency=currency,
          plan_id=plan)  # fmt: skip


@simulate_app.command("payment-succeeded")
def payment_succeeded(
    ctx: typer.Context,
    subscription: str = typer.Argument(..., help="Subscription id"),
    customer: str = typer.Option(None, "--customer", help="Customer id"),
    api: str = API_OPTION,
    at: str = AT_OPTION,
    webhook: bool = WEBHOOK_OPTION,
) -> None:
    """The payment went through: a running campaign ends recovered."""
    _send(ctx, "payment_succeeded", subscription, api, at, webhook, customer_id=customer)


@simulate_app.command("payment-method-updated")
def payment_method_updated(
    ctx: typer.Context,
    subscription: str = typer.Argument(..., help="Subscription id"),
    customer: str = typer.Option(None, "--customer", help="Customer id"),
    api: str = API_OPTION,
    at: str = AT_OPTION,
) -> None:
    """The customer updated their payment method: a running campaign is told."""
    _send(ctx, "payment_method_updated", subscription, api, at, customer_id=customer)


@simulate_app.command("provider")
def provider(
    ctx: typer.Context,
    subscription: str = typer.Argument(..., help="Subscription id"),
    status: str = typer.Option(None, "--status", help="active | past_due | unpaid | canceled | trialing | incomplete"),
    invoice: str = typer.Option(
        None, "--invoice", help="The latest invoice: draft | open | paid | void | uncollectible"
    ),
    processing: bool = typer.Option(None, "--processing/--settled", help="A payment is (not) processing"),
) -> None:
    """Change the fake provider's own state without sending a webhook (drift behind the
    engine's back); prints the state after."""
    from dunning.providers import fake_account
    from dunning.store.store import Store

    changes: dict[str, Any] = {k: v for k, v in (("status", status), ("invoice_state", invoice)) if v is not None}
    now = datetime.now(UTC)
    if processing is not None:
        changes.update(processing=processing, payment_started_at=now if processing else None)
    if not changes:
        typer.echo("error: nothing to change: give --status, --invoice or --processing/--settled", err=True)
        raise typer.Exit(2)
    try:
        with Store.open(_settings(ctx).db_url) as store:
            after = fake_account.update(store.engine, subscription, now, **changes)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"fake provider {subscription}: status {after.status}, invoice {after.invoice_id or '-'} "
               f"{after.invoice_state or '-'}, processing {'yes' if after.processing else 'no'}; no webhook sent")  # fmt: skip
