"""`dunning campaign list`: campaigns from Temporal visibility, filtered on the engine's
search attributes (worker/search_attributes.py), newest first in Temporal's visibility
order: running campaigns first (latest start first), then ended ones, latest end first.

    dunning campaign list --outcome exhausted --provider stripe --since 2026-11-01T00:00:00Z
    dunning campaign list --stage needs_attention --json

One row per run (a campaign whose payment came after the exhausted end has a second,
short run: `recovered_after_cancel`). `--stage` takes the DunningStage key (as in the
Temporal UI: `reminder`, `needs_attention`, `shadow:first_notice`); the table shows it in
words (dunning.stage_names). Exit 2 for a bad option, 1 when Temporal cannot be reached
or refuses the query.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import typer

from dunning import stage_names

OUTCOMES = (*stage_names.OUTCOMES, "running")
MAX_VALUE = 100  # a stage key or provider name: bounded
MAX_LIMIT = 10_000
PAGE_SIZE = 100
CONNECT_TIMEOUT = 10.0
_UNQUOTABLE = set("'\"\\`")


@dataclass(frozen=True)
class Filters:
    stage: str | None = None
    outcome: str | None = None
    provider: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class CampaignRow:
    workflow_id: str
    run_id: str | None
    subscription_id: str
    customer_id: str
    provider: str
    campaign_started_at: datetime | None
    stage: str  # the DunningStage key
    stage_words: str
    outcome: str  # DunningOutcome, `running`, or `-` (ended without one: code before the patch)
    status: str  # the Temporal execution status: running, completed, terminated, ...
    start_time: datetime
    close_time: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


# --- the visibility query ---------------------------------------------------------------
def checked_value(value: str | None, option: str) -> str | None:
    """A stage or provider filter: 1 to MAX_VALUE printable characters, no quote or
    backslash (so nothing in it can end the query's string literal)."""
    if value is None:
        return None
    if not value or len(value) > MAX_VALUE or not value.isprintable() or _UNQUOTABLE & set(value):
        raise typer.BadParameter(
            f"{value[:MAX_VALUE]!r}: give 1 to {MAX_VALUE} printable characters without quotes or backslashes",
            param_hint=f"'{option}'",
        )
    return value


def checked_stage(value: str | None) -> str | None:
    return checked_value(value, "--stage")


def checked_provider(value: str | None) -> str | None:
    return checked_value(value, "--provider")


def checked_outcome(value: str | None) -> str | None:
    if value is not None and value not in OUTCOMES:
        raise typer.BadParameter(f"{value[:MAX_VALUE]!r}: one of {', '.join(OUTCOMES)}", param_hint="'--outcome'")
    return value


def quote(value: str) -> str:
    """A string literal of the visibility query language."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def visibility_query(filters: Filters) -> str:
    """The list filter (SQL-like). Temporal orders the result (ORDER BY is not supported
    on its SQL visibility): running first, then by close time, newest first."""
    from workflows.campaign import WORKFLOW_NAME

    clauses = [f"WorkflowType = {quote(WORKFLOW_NAME)}"]
    if filters.stage is not None:
        clauses.append(f"DunningStage = {quote(filters.stage)}")
    if filters.outcome == "running":
        clauses.append("ExecutionStatus = 'Running'")
    elif filters.outcome is not None:
        # a campaign ended by code before DunningOutcome existed has its end as its stage
        clauses.append(f"(DunningOutcome = {quote(filters.outcome)} OR DunningStage = {quote(filters.outcome)})")
    if filters.provider is not None:
        clauses.append(f"DunningProvider = {quote(filters.provider)}")
    if filters.since is not None:
        clauses.append(f"DunningCampaignStartedAt >= {quote(_rfc3339(filters.since))}")
    return " AND ".join(clauses)


# --- reading it -------------------------------------------------------------------------
async def list_campaigns(client, filters: Filters, limit: int, day_seconds: float | None = None) -> list[CampaignRow]:
    """At most `limit` campaign runs matching `filters`, newest first, read page by page."""
    from temporalio.client import WorkflowExecutionStatus

    from worker import search_attributes as sa

    rows = []
    query = visibility_query(filters)
    async for execution in client.list_workflows(query, limit=limit, page_size=min(limit, PAGE_SIZE)):
        attrs = execution.typed_search_attributes
        stage = attrs.get(sa.STAGE) or "-"
        started = attrs.get(sa.CAMPAIGN_STARTED_AT)
        running = execution.status == WorkflowExecutionStatus.RUNNING
        outcome = attrs.get(sa.OUTCOME) or (
            "running" if running else stage if stage in stage_names.OUTCOMES else "-"
        )  # fmt: skip
        rows.append(
            CampaignRow(
                workflow_id=execution.id,
                run_id=execution.run_id,
                subscription_id=attrs.get(sa.SUBSCRIPTION_ID) or execution.id.removeprefix("dunning-"),
                customer_id=attrs.get(sa.CUSTOMER_ID) or "-",
                provider=attrs.get(sa.PROVIDER) or "-",
                campaign_started_at=started,
                stage=stage,
                stage_words=stage_names.words(stage, anchor=started, day_seconds=day_seconds),
                outcome=outcome,
                status=execution.status.name.lower() if execution.status else "unknown",
                start_time=execution.start_time,
                close_time=execution.close_time,
            )
        )
    return rows


COLUMNS = ("subscription", "customer", "provider", "started", "stage", "outcome", "status")


def render(rows: list[CampaignRow]) -> str:
    if not rows:
        return "no campaigns match"
    table = [COLUMNS] + [
        (
            r.subscription_id,
            r.customer_id,
            r.provider,
            r.campaign_started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if r.campaign_started_at else "-",
            r.stage_words,
            stage_names.outcome_words(r.outcome),
            r.status,
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table)


# --- the command ------------------------------------------------------------------------
def list_command(
    stage: str = typer.Option(
        None, "--stage", callback=checked_stage,
        help="DunningStage key, e.g. reminder, needs_attention, exhausted, shadow:first_notice",
    ),
    outcome: str = typer.Option(None, "--outcome", callback=checked_outcome, help=" | ".join(OUTCOMES)),
    provider: str = typer.Option(
        None, "--provider", callback=checked_provider, help="e.g. stripe, braintree, fake"
    ),
    since: str = typer.Option(None, "--since", help="Only campaigns whose failure is at or after (ISO 8601 with a zone)"),
    limit: int = typer.Option(50, "--limit", min=1, max=MAX_LIMIT, help="At most this many runs, newest first"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:  # fmt: skip
    """List campaigns from Temporal visibility: subscription, customer, provider, started, stage, outcome, status."""
    from starter.cli import fail, run_client, settings_or_exit
    from starter.cli_simulate import parse_aware_time

    filters = Filters(stage, outcome, provider, parse_aware_time(since, "--since"))
    settings = settings_or_exit()

    async def go() -> None:
        from temporalio.service import RPCError

        from worker.app import connect

        try:
            client = await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
        except TimeoutError:
            fail(f"cannot reach Temporal at {settings.temporal_address}: no answer within {CONNECT_TIMEOUT:g}s")
        except Exception as err:
            fail(f"cannot reach Temporal at {settings.temporal_address}: {_first_line(err)}")
        try:
            rows = await list_campaigns(client, filters, limit, settings.day_seconds)
        except RPCError as err:
            fail(
                f"Temporal at {settings.temporal_address} refused the list ({_first_line(err)}); are the search "
                "attributes registered (`dunning dev` does; docker compose ... up register-search-attributes)?"
            )
        if as_json:
            typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        else:
            typer.echo(render(rows))

    run_client(go())


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__
