"""`dunning campaign list` on a real `temporal server start-dev`: visibility with the
engine's custom search attributes (the time-skipping test server cannot filter on them).

Five campaigns on one dev server, with workers in this process: four on a fast queue (a
"day" of FAST_DAY s) that end exhausted, recovered, resolved, and recovered after a
permanent failure (needs_attention); one on a slow queue that keeps running after its
first notice. The filters, the readable stage, `--json` and the exit codes are checked,
the last through the real `dunning` command. The pure parts (stage words, the query,
the option checks) need no server.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus
from typer.testing import CliRunner

from dunning import stage_names
from dunning.config import load_settings
from dunning.email.outbox import OutboxSink
from dunning.providers import fake_state
from dunning.store.store import Store
from starter.cli import app
from starter.cli_campaigns import Filters, list_campaigns, quote, visibility_query
from starter.client import DunningClient
from tests.test_devserver import (  # noqa: F401  (devserver: a module-scoped fixture)
    ABORT_AT_EXIT,
    DevServer,
    await_until,
    clean_env,
    devserver,
    dunning_command,
    free_port,
)
from worker import search_attributes as sa
from worker.app import build_worker

FAST_DAY = 0.3  # the default cadence ends on day 14: ~4 s


# --- pure: stage words, the query and the option checks (no server) -------------------------
ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("first_notice", "first notice"),
        ("final_notice", "final notice"),
        ("class:update_payment_method", "email: update payment method"),
        ("retry@3d", "retry 2 of 4 (day 3)"),
        ("retry@9d", "retry (day 9)"),  # not one of the plan's days
        (f"retry@pm{int(ANCHOR.timestamp()) + 5 * 86400 // 2}", "retry after a payment method update (day 2.5)"),
        ("level:limited@7d", "consequence: limited (day 7)"),
        ("exhaust", "end of the grace period"),
        ("shadow:first_notice", "shadow: first notice"),
        ("shadow:retry@1d", "shadow: retry 1 of 4 (day 1)"),
        ("shadow:level:suspended@10d", "shadow: consequence: suspended (day 10)"),
        ("needs_attention", "needs attention"),
        ("pending", "waiting for the first action"),
        ("recovered_after_cancel", "recovered after cancel"),
        ("exhausted", "exhausted"),
        ("my_custom_step", "my custom step"),
    ],
)
def test_stage_keys_in_words(key: str, said: str) -> None:
    assert stage_names.words(key, retry_days=[1, 3, 5, 7], anchor=ANCHOR, day_seconds=86400) == said


def test_stage_words_without_the_plan_say_less() -> None:
    assert stage_names.words("retry@3d") == "retry (day 3)"
    assert stage_names.words("retry@pm1795374994") == "retry after a payment method update"
    assert stage_names.words("bad\x00key_" + "x" * 500).startswith("bad?key")
    assert len(stage_names.words("x" * 500)) == stage_names.MAX_WORDS


def test_the_visibility_query_quotes_every_value() -> None:
    assert quote("it's") == r"'it\'s'" and quote("a\\b") == r"'a\\b'"
    query = visibility_query(Filters(stage="shadow:retry@3d", outcome="exhausted", provider="stripe"))
    assert query == (
        "WorkflowType = 'DunningCampaign' AND DunningStage = 'shadow:retry@3d' AND "
        "(DunningOutcome = 'exhausted' OR DunningStage = 'exhausted') AND DunningProvider = 'stripe'"
    )
    assert visibility_query(Filters(outcome="running")).endswith("AND ExecutionStatus = 'Running'")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--outcome", "paid"], "--outcome"),
        (["--stage", "x' OR WorkflowType != '"], "--stage"),
        (["--stage", ""], "--stage"),
        (["--provider", "a" * 101], "--provider"),
        (["--provider", "tab\there"], "--provider"),
        (["--since", "last week"], "--since"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bad_filters_exit_2_naming_the_option(args: list[str], option: str) -> None:
    result = CliRunner().invoke(app, ["campaign", "list", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output, result.output


# --- on a dev server ------------------------------------------------------------------------
@dataclass
class Fleet:
    devserver: DevServer
    home: Path
    subs: dict[str, str]  # role -> subscription id
    started_at: dict[str, object]
    dunning: DunningClient


@pytest_asyncio.fixture(scope="module")
async def fleet(devserver: DevServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:  # noqa: F811
    home = tmp_path_factory.mktemp("campaign-list")
    run = uuid.uuid4().hex[:6]
    subs = {role: f"sub_{role}_{run}" for role in ("exhausted", "recovered", "resolved", "attention", "running")}
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(OutboxSink(home / "outbox", port=0))
        store = stack.enter_context(Store.open(f"sqlite:///{home / 'dunning.db'}"))

        def settings(queue: str, day: float):
            return load_settings(
                home=home, database_url=f"sqlite:///{home / 'dunning.db'}", smtp_port=sink.port, day_seconds=day,
                temporal_address=devserver.settings.temporal_address, temporal_task_queue=f"{queue}-{run}",
            )  # fmt: skip

        fast, slow = settings("fast", FAST_DAY), settings("slow", 3600)

        def handle(sub: str):
            return devserver.client.get_workflow_handle(f"dunning-{sub}")

        async with build_worker(devserver.client, fast, store), build_worker(devserver.client, slow, store):
            quick, patient = DunningClient(devserver.client, store, fast), DunningClient(devserver.client, store, slow)
            for sub in subs.values():
                fake_state.set_card(store.engine, sub, "decline:insufficient_funds")
            started = {}
            for role in ("exhausted", "recovered", "resolved", "attention"):
                email = None if role == "attention" else f"{role}@example.com"  # no address: needs_attention
                await quick.start_campaign(subs[role], f"cus_{role}", email)
                started[role] = (await handle(subs[role]).describe()).start_time
            await quick.payment_recovered(subs["recovered"], "paid_out_of_band")
            await quick.resolve(subs["resolved"], "invoice voided", "voided")

            async def attention_first() -> bool:  # recovered only once its email failed for good
                state = await handle(subs["attention"]).query("state")
                return state["stage"] == "needs_attention"

            await await_until(attention_first, 30, lambda: f"{subs['attention']} never needs_attention")
            await quick.payment_recovered(subs["attention"], "paid_out_of_band")
            await patient.start_campaign(subs["running"], "cus_running", "running@example.com", provider="stripe")
            started["running"] = (await handle(subs["running"]).describe()).start_time
            for role in ("exhausted", "recovered", "resolved", "attention"):
                state = await handle(subs[role]).result()
                assert state["outcome"] == ("recovered" if role == "attention" else role), state

            async def first_notice_sent() -> bool:
                return (await handle(subs["running"]).query("state"))["stage"] == "first_notice"

            await await_until(first_notice_sent, 30, lambda: "the running campaign never sent its first notice")
            try:
                yield Fleet(devserver, home, subs, started, patient)
            finally:
                with contextlib.suppress(Exception):
                    await handle(subs["running"]).terminate("test over")


async def listed(fleet: Fleet, limit: int = 50, **filters) -> list:
    """The rows of this module's campaigns (visibility may lag a moment behind a close)."""
    rows = await list_campaigns(fleet.devserver.client, Filters(**filters), limit, FAST_DAY)
    return [r for r in rows if r.subscription_id in fleet.subs.values()]


async def roles(fleet: Fleet, **filters) -> set[str]:
    by_sub = {sub: role for role, sub in fleet.subs.items()}
    return {by_sub[r.subscription_id] for r in await listed(fleet, **filters)}


@pytest.mark.devserver
async def test_list_filters_by_outcome_stage_and_provider(fleet: Fleet) -> None:
    async def settled() -> bool:  # every close is visible
        return await roles(fleet, outcome="running") == {"running"}

    await await_until(settled, 20, lambda: "visibility never showed only the slow campaign running")
    assert await roles(fleet, outcome="exhausted") == {"exhausted"}
    assert await roles(fleet, outcome="recovered") == {"recovered", "attention"}
    assert await roles(fleet, outcome="resolved") == {"resolved"}
    assert await roles(fleet, outcome="recovered_after_cancel") == set()
    # the stage is the DunningStage key; needs_attention stays after the end, the outcome says how it ended
    assert await roles(fleet, stage="needs_attention") == {"attention"}
    assert await roles(fleet, stage="first_notice") == {"running"}
    assert await roles(fleet, stage="exhausted", outcome="exhausted") == {"exhausted"}
    assert await roles(fleet, provider="stripe") == {"running"}
    assert await roles(fleet, provider="fake") == {"exhausted", "recovered", "resolved", "attention"}
    assert await roles(fleet, provider="fake", outcome="running") == set()
    assert await roles(fleet, since=fleet.started_at["running"] + timedelta(days=1)) == set()
    assert len(await roles(fleet, since=fleet.started_at["exhausted"] - timedelta(minutes=1))) == 5

    rows = await listed(fleet, limit=2)  # newest first: the running one, then the last to end
    assert [r.subscription_id for r in rows] == [fleet.subs["running"], fleet.subs["exhausted"]]

    by_role = {
        role: row for row in await listed(fleet) for role, sub in fleet.subs.items() if sub == row.subscription_id
    }
    running = by_role["running"]
    assert (running.customer_id, running.provider, running.outcome, running.status) == (
        "cus_running", "stripe", "running", "running",
    )  # fmt: skip
    assert (running.stage, running.stage_words) == ("first_notice", "first notice")
    attention = by_role["attention"]
    assert (attention.stage_words, attention.outcome, attention.status) == ("needs attention", "recovered", "completed")
    assert by_role["exhausted"].stage_words == "exhausted" and by_role["exhausted"].campaign_started_at is not None


@pytest.mark.devserver
async def test_current_details_say_the_stage_and_the_outcome_in_words(fleet: Fleet) -> None:
    async def details(role: str) -> str:
        handle = fleet.dunning.client.get_workflow_handle(f"dunning-{fleet.subs[role]}")
        meta = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
        return meta.current_details

    running = await details("running")
    assert running.startswith("Stage: first notice.\nNext: "), running
    desc = await fleet.dunning.client.get_workflow_handle(f"dunning-{fleet.subs['exhausted']}").describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    assert desc.typed_search_attributes.get(sa.OUTCOME) == "exhausted"
    assert desc.typed_search_attributes.get(sa.STAGE) == "exhausted"


@pytest.mark.devserver
def test_the_dunning_command_lists_as_a_table_and_as_json(fleet: Fleet) -> None:
    env = clean_env(home=fleet.home, temporal_address=fleet.devserver.settings.temporal_address, day_seconds=FAST_DAY)

    def dunning(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [*dunning_command(), "campaign", "list", *args], env=env, cwd=fleet.home,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ABORT_AT_EXIT not in out.stderr, out
        return out

    out = dunning("--provider", "stripe", "--json")
    assert out.returncode == 0, out
    (row,) = json.loads(out.stdout)
    assert row["subscription_id"] == fleet.subs["running"] and row["customer_id"] == "cus_running"
    assert (row["stage"], row["stage_words"], row["outcome"], row["status"]) == (
        "first_notice", "first notice", "running", "running",
    )  # fmt: skip
    assert row["campaign_started_at"].startswith("20") and row["workflow_id"] == f"dunning-{fleet.subs['running']}"

    table = dunning("--outcome", "recovered")
    assert table.returncode == 0, table
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["subscription", "customer", "provider", "started", "stage", "outcome", "status"]
    mine = [line for line in lines if fleet.subs["attention"] in line]
    assert len(mine) == 1 and "needs attention" in mine[0] and "recovered" in mine[0], table.stdout

    none = dunning("--stage", "no_such_stage")
    assert none.returncode == 0 and none.stdout.strip() == "no campaigns match", none

    unreachable = subprocess.run(
        [*dunning_command(), "campaign", "list"], env={**env, "DUNNING_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"},
        cwd=fleet.home, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unreachable.returncode == 1, unreachable
    assert "cannot reach Temporal at 127.0.0.1:" in unreachable.stderr, unreachable
