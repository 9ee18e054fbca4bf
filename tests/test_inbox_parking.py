"""Poison events are parked, never starve good ones: events wait while Temporal is down
(not counted: a wait, not a fault); when it is back every good event is dispatched (its
first notice lands) while each poison event fails `inbox_park_after` times and is parked
with a reason that names the error and no email address. Listed and put back by the CLI,
counted in /metrics. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from dunning.store import inbox_parking
from starter.client import DunningClient
from starter.dispatch import redispatch_pending
from tests.api_helpers import api_client, api_settings, eventually, post, subs, uid  # noqa: F401
from tests.webhook_payloads import fake_request

PARK_AFTER = 3
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def poison(dunning: DunningClient, bad: set[str]) -> None:
    """The campaign start fails for `bad` subscriptions with an error waiting cannot fix
    (and that echoes a customer's address, as servers do)."""
    attach = dunning.attach

    async def attach_or_fail(event, anchor):
        if event.subscription_id in bad:
            raise RPCError(f"invalid argument for {event.subscription_id} (owner poison@example.com)",
                           RPCStatusCode.INVALID_ARGUMENT, b"")  # fmt: skip
        return await attach(event, anchor)

    dunning.attach = attach_or_fail  # type: ignore[method-assign]
    dunning.settings = dunning.settings.model_copy(update={"inbox_park_after": PARK_AFTER})


def statuses(store, provider: str, ids: list[str]) -> list[str]:
    return [store.inbox_get(provider, i).status for i in ids]


async def test_poison_events_are_parked_and_every_good_event_is_dispatched(tenv, settings, store, dunning, mailbox, subs):
    now = (await tenv.get_current_time()).replace(microsecond=0)
    good = [subs("sub_good") for _ in range(2)]
    bad = [subs("sub_poison") for _ in range(4)]
    poison(dunning, set(bad))
    # poison events are older: oldest-first alone would retry them forever ahead of the good ones
    requests = {sub: fake_request("payment_failed", sub, now - timedelta(hours=5 - i), id=uid("evt"), customer_id=f"cus_{sub}",
                                  customer_email=f"{sub}@example.com") for i, sub in enumerate(bad + good)}  # fmt: skip
    ids = {sub: json.loads(body)["id"] for sub, (_, body, _) in requests.items()}

    async def temporal_down() -> DunningClient:
        raise ConnectionRefusedError("connection refused")

    config = api_settings(settings, inbox_park_after=PARK_AFTER)
    async with api_client(config, store, temporal_down, clock=tenv.get_current_time) as down:
        for request in requests.values():
            assert (await post(down, request)).status_code == 503
        # a stored event the engine can no longer read: poison for the sweep only
        store.inbox_receive("fake", "evt_unreadable", "payment_failed", bad[0], now, {"event": {"provider": "nobody"}})
        metrics = (await down.get("/metrics.json")).json()
        assert (metrics["dunning.inbox.pending"], metrics["dunning.inbox.parked"]) == (7, 0)

    closed = DunningClient(await Client.connect("127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter), store, config)
    for _ in range(3):  # the sweep while Temporal is unreachable: waits, counts nothing
        assert await redispatch_pending(store, closed, limit=2, timeout=2) == 0
    assert {r.attempts for r in store.inbox_undispatched(now + timedelta(days=1))} == {0}

    passes, dispatched = 0, 0
    while store.inbox_undispatched(now + timedelta(days=1)) and passes < 20:
        dispatched += await redispatch_pending(store, dunning, limit=2)  # the sweep's batch: 2 rows
        passes += 1
        if passes == 3:  # two batches of poison, then the good ones: never starved
            assert statuses(store, "fake", [ids[s] for s in good]) == ["dispatched", "dispatched"]
    assert dispatched == 2
    notices = await eventually(lambda: len(mailbox.messages()) == 2 and mailbox.messages())
    assert sorted(m["To"] for m in notices) == sorted(f"{s}@example.com" for s in good)

    parked = inbox_parking.parked(store)
    assert sorted(p.event_id for p in parked) == sorted([ids[s] for s in bad] + ["evt_unreadable"])
    assert {p.attempts for p in parked} == {PARK_AFTER}
    by_id = {p.event_id: p for p in parked}
    assert by_id[ids[bad[1]]].reason.startswith("RPCError: invalid argument for")
    assert by_id["evt_unreadable"].reason.startswith("ValidationError")
    assert all("@example.com" not in p.reason for p in parked)  # no address in the reason

    async def up() -> DunningClient:
        return dunning

    async with api_client(config, store, up, clock=tenv.get_current_time) as api:
        metrics = (await api.get("/metrics.json")).json()
        assert (metrics["dunning.inbox.pending"], metrics["dunning.inbox.parked"]) == (0, 5)
        again = await post(api, requests[bad[2]])  # the provider redelivers a parked event: recorded, nothing done
        assert again.status_code == 200 and again.json()["status"] == "parked"
    assert await redispatch_pending(store, dunning) == 0  # parked rows are never swept


async def test_a_webhook_whose_dispatch_keeps_failing_is_parked_and_answered_so(tenv, settings, store, dunning, subs):
    now = (await tenv.get_current_time()).replace(microsecond=0)
    sub = subs("sub_poison_hook")
    poison(dunning, {sub})

    async def up() -> DunningClient:
        return dunning

    request = fake_request("payment_failed", sub, now, customer_id="cus_ph", customer_email="ph@example.com")
    event_id = json.loads(request[1])["id"]
    async with api_client(api_settings(settings, inbox_park_after=PARK_AFTER), store, up, clock=tenv.get_current_time) as api:
        for attempt in range(1, PARK_AFTER + 1):
            response = await post(api, request)
            assert response.status_code == 500  # the provider redelivers
            assert store.inbox_get("fake", event_id).attempts == attempt
        assert store.inbox_get("fake", event_id).status == "parked"
        response = await post(api, request)
        assert response.status_code == 200 and response.json()["status"] == "parked"
        assert "ph@example.com" not in response.text and "poison@example.com" not in response.text


@pytest.fixture
def cli(monkeypatch, tmp_path, db_url):
    """`dunning inbox ...` on this test's database, whatever DUNNING_* the shell has."""
    from starter.cli_inbox import inbox_app

    for key in [k for k in os.environ if k.startswith("DUNNING_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no ./dunning.toml
    monkeypatch.setenv("DUNNING_HOME", str(tmp_path))
    monkeypatch.setenv("DUNNING_DATABASE_URL", db_url)
    return lambda *args: CliRunner().invoke(inbox_app, list(args[1:]))  # args[0]: "inbox"


def test_the_cli_lists_parked_events_and_puts_one_back(store, cli):
    for event_id, sub in (("evt_p1", "sub_1"), ("evt_p2", "sub_2"), ("evt_ok", "sub_3")):
        store.inbox_receive("fake", event_id, "payment_failed", sub, T0, {"event": {}})
    for _ in range(2):
        inbox_parking.dispatch_failed(store, "fake", "evt_p1", "RPCError: bad", park_after=2)
    inbox_parking.dispatch_failed(store, "fake", "evt_p2", "ValueError: <address> unknown", park_after=1)
    assert cli("inbox", "parked").output.count("fake  evt_p") == 2

    listed = json.loads(cli("inbox", "parked", "--json").output)
    assert [(r["provider"], r["event_id"], r["subscription_id"], r["attempts"], r["reason"]) for r in listed] == [
        ("fake", "evt_p1", "sub_1", 2, "RPCError: bad"),
        ("fake", "evt_p2", "sub_2", 1, "ValueError: <address> unknown"),
    ]
    retried = cli("inbox", "retry", "fake", "evt_p1")
    assert retried.exit_code == 0 and "received" in retried.output
    assert store.inbox_get("fake", "evt_p1").status == "received" and store.inbox_get("fake", "evt_p1").attempts == 0
    assert [r["event_id"] for r in json.loads(cli("inbox", "parked", "--json").output)] == ["evt_p2"]
    missing = cli("inbox", "retry", "fake", "evt_ok")  # not parked: nothing to put back
    assert missing.exit_code == 1 and "no parked event fake/evt_ok" in missing.output
    assert inbox_parking.counts(store) == {"pending": 2, "parked": 1}
