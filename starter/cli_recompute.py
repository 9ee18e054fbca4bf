"""`dunning recompute SUB [--dry-run] [--json] [--provider NAME] [--idempotency-key K]`:
read every store, show them side by side with the desired state and the actions, then
apply the actions (through the receive path) unless --dry-run. An ops person never needs SQL.

Exit 0 when the stores agree or the actions were applied (or deferred, e.g. a payment in
flight: the report says why), 1 when Temporal or the database is unreachable or the
subscription changed during the run, 2 for a bad argument or config.
"""

from __future__ import annotations

import asyncio
import uuid

import typer

from dunning import text


def recompute_command(
    subscription: str = typer.Argument(..., help="Subscription id"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be done; change nothing"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report"),
    provider: str = typer.Option(
        None, "--provider", help="stripe | braintree | fake, for a subscription the engine never saw"
    ),
    key: str = typer.Option(None, "--idempotency-key", help="The same key again answers the first result"),
) -> None:
    """Recompute one subscription from every store and apply the minimal diff."""
    from dunning.providers.reads import READERS
    from starter.cli import _client, fail, run_client, settings_or_exit
    from starter.recompute import Report, UnknownSubscription, request
    from starter.recompute import dry_run as recompute_dry
    from starter.recompute_view import render

    bad = text.problem(subscription, text.MAX_ID) or (text.key_problem(key) if key is not None else None)
    if bad:
        raise typer.BadParameter(bad)
    if provider is not None and provider not in READERS:
        raise typer.BadParameter(
            f"{provider!r} is unknown (known: {', '.join(sorted(READERS))})", param_hint="--provider"
        )
    settings = settings_or_exit()

    async def go() -> None:
        from dunning.store.recompute_writes import Changed

        client = await _client(settings)
        assert client is not None
        try:
            await asyncio.to_thread(client.store.migrate)
            if dry_run:
                found: Report | None = await recompute_dry(client.store, client, subscription, provider)
            else:
                status, found, first = await request(client.store, client, subscription, key or uuid.uuid4().hex,
                                                     provider=provider)  # fmt: skip
                if found is None:
                    typer.echo(f"{status}: this key was used before; its result: {first}")
                    return
        except UnknownSubscription as err:
            fail(str(err), 2)
            return
        except Changed as err:
            fail(str(err))
            return
        assert found is not None
        typer.echo(found.model_dump_json(indent=2) if as_json else render(found))

    run_client(go())
