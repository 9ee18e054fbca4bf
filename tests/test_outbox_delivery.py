"""The outbox deliverer (starter/outbound.py) against a host's endpoint on loopback that
verifies every request with the `standardwebhooks` library, on SQLite and PostgreSQL.

What a host sees: every event, signed, each once by `webhook-id`, in order per
subscription; a receiver that is down (connection refused, 503) for a day gets them all
when it returns; one subscription whose events keep failing does not hold up another.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from dunning.config import load_settings
from dunning.contracts import OutboundEvent
from dunning.store import outbox
from dunning.store.store import Store
from starter.outbound import OutboxDeliverer, backoff, signing_key
from tests.test_devserver import clean_env, dunning_command
from tests.webhook_receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"a host's shared secret, 32 bytes").decode()
STARTED = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
# one subscription's life as the campaign reports it, in order
LIFE = [("campaign_started", ""), ("consequence_changed", "limited"), ("consequence_changed", "suspended"),
        ("exhausted", "")]  # fmt: skip


def emit(store: Store, sub: str, type_: str, key: str = "") -> str:
    event = OutboundEvent(
        type=type_,  # type: ignore[arg-type]
        subscription_id=sub,
        customer_id=f"cus_{sub}",
        campaign_started_at=STARTED,
        occurred_at=datetime.now(UTC),
        data={"key": key} if key else {},
    )
    with store.write() as conn:
        outbox.enqueue(store, conn, event)
    return outbox.event_id(event)


def emit_lives(store: Store, subs: list[str]) -> dict[str, list[str]]:
    """Each subscription's whole life, interleaved across subscriptions; ids per subscription."""
    ids: dict[str, list[str]] = {sub: [] for sub in subs}
    for type_, key in LIFE:
        for sub in subs:
            ids[sub].append(emit(store, sub, type_, key))
    return ids


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)  # events enqueued now are due

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(Webhook(SECRET)).start()
    yield r
    r.stop()


def deliverer(store: Store, urls: list[str], **options) -> OutboxDeliverer:
    return OutboxDeliverer(store, urls, SECRET, **options)


def rows(store: Store) -> dict[str, outbox.OutboxRow]:
    return {r.event_id: r for r in outbox.list_events(store, limit=1000)}


async def test_every_event_arrives_signed_once_in_order_per_subscription(store: Store, receiver: Receiver) -> None:
    ids = emit_lives(store, ["sub_a", "sub_b", "sub_c"])
    assert outbox.outbox_counts(store)["pending"] == 12

    delivered = await deliverer(store, [receiver.url]).deliver_due()

    assert delivered == 12
    assert receiver.unverified == []
    for sub, expected in ids.items():
        assert receiver.ids(sub) == expected, sub
    assert receiver.redeliveries == {}
    first = next(e for e in receiver.events if e.webhook_id == ids["sub_a"][0])
    assert first.headers["content-type"] == "application/json"
    assert abs(int(first.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert first.payload["type"] == "campaign_started" and first.payload["customer_id"] == "cus_sub_a"
    assert first.payload["subscription_id"] == "sub_a"
    assert {r.status for r in rows(store).values()} == {"delivered"}
    assert all(r.attempts == 1 and r.delivered_at is not None for r in rows(store).values())
    assert outbox.outbox_counts(store) == {"pending": 0, "delivered": 12, "oldest_pending_age_seconds": None}
    assert await deliverer(store, [receiver.url]).deliver_due() == 0  # nothing twice


async def test_receiver_down_for_a_day_then_back_gets_everything_once_in_order(store: Store, receiver: Receiver) -> None:
    clock = Clock()
    d = deliverer(store, [receiver.url], clock=clock)
    ids = emit_lives(store, ["sub_a", "sub_b"])
    port = receiver.port
    receiver.stop()  # connection refused

    for _ in range(24):  # a day, looked at every hour
        assert await d.deliver_due() == 0
        clock.advance(hours=1)
    ids["sub_a"].append(emit(store, "sub_a", "recovered_after_cancel"))  # a new fact during the outage

    heads = {r.subscription_id: r for r in rows(store).values() if r.attempts}
    assert set(heads) == {"sub_a", "sub_b"}  # only each subscription's first event was tried
    for head in heads.values():
        assert head.event_id in (ids["sub_a"][0], ids["sub_b"][0])
        assert head.attempts == 24
        assert head.next_attempt_at - clock.now <= timedelta(minutes=5)  # capped backoff
        assert head.last_error == f"url[0] 127.0.0.1:{port}: ConnectError"
    counts = outbox.outbox_counts(store, now=clock.now)
    assert counts["pending"] == 9 and counts["delivered"] == 0
    assert counts["oldest_pending_age_seconds"] >= 24 * 3600

    receiver.answer = lambda payload: 503  # back, but not ready yet
    receiver.start()
    clock.advance(minutes=5)
    assert await d.deliver_due() == 0
    assert receiver.refused == 2 and receiver.events == []
    errors = {r.last_error for r in rows(store).values() if r.last_error}
    assert errors == {f"url[0] 127.0.0.1:{port}: HTTP 503"}  # the status, never the response body

    receiver.answer = lambda payload: 200
    clock.advance(minutes=5)
    assert await d.deliver_due() == 9

    assert receiver.unverified == []
    assert receiver.ids("sub_a") == ids["sub_a"]
    assert receiver.ids("sub_b") == ids["sub_b"]
    assert receiver.redeliveries == {}
    assert outbox.outbox_counts(store)["pending"] == 0


async def test_a_failing_subscription_does_not_block_another(store: Store, receiver: Receiver) -> None:
    receiver.answer = lambda payload: 500 if payload["subscription_id"] == "sub_bad" else 204
    clock = Clock()
    d = deliverer(store, [receiver.url], clock=clock)
    ids = emit_lives(store, ["sub_bad", "sub_ok"])

    for _ in range(5):
        await d.deliver_due()
        clock.advance(minutes=10)

    assert receiver.ids("sub_ok") == ids["sub_ok"]
    assert receiver.ids("sub_bad") == []
    bad = [rows(store)[i] for i in ids["sub_bad"]]
    assert bad[0].status == "pending" and bad[0].attempts == 5 and bad[0].last_error.endswith("HTTP 500")
    assert [r.attempts for r in bad[1:]] == [0, 0, 0]  # never sent ahead of the first


async def test_two_urls_each_get_every_event_once_while_one_flaps(store: Store) -> None:
    steady = Receiver(Webhook(SECRET)).start()
    flaky = Receiver(Webhook(SECRET)).start()
    calls = {"n": 0}

    def flapping(payload) -> int:
        calls["n"] += 1
        return 503 if calls["n"] % 2 else 200

    flaky.answer = flapping
    clock = Clock()
    try:
        d = deliverer(store, [steady.url, flaky.url], clock=clock)
        ids = emit_lives(store, ["sub_a"])
        for _ in range(10):
            await d.deliver_due()
            clock.advance(minutes=5)
        assert steady.ids() == flaky.ids() == ids["sub_a"]
        assert steady.redeliveries == flaky.redeliveries == {}
        assert flaky.refused >= 4
    finally:
        steady.stop()
        flaky.stop()


async def test_two_deliverers_on_one_database_deliver_each_event_once(store: Store, receiver: Receiver) -> None:
    ids = emit_lives(store, [f"sub_{i}" for i in range(6)])
    a, b = deliverer(store, [receiver.url]), deliverer(store, [receiver.url])
    delivered = await asyncio.gather(a.deliver_due(), b.deliver_due())
    await a.deliver_due()  # whatever one left because the other held it

    assert sum(delivered) <= 24
    assert receiver.redeliveries == {}
    for sub, expected in ids.items():
        assert receiver.ids(sub) == expected, sub
    assert outbox.outbox_counts(store)["pending"] == 0


async def test_run_loop_delivers_as_events_come_and_stops_cleanly(store: Store, receiver: Receiver) -> None:
    up_at = time.monotonic() + 0.6  # 503 until then
    receiver.answer = lambda payload: 200 if time.monotonic() >= up_at else 503
    d = deliverer(store, [receiver.url], poll_seconds=0.05, backoff_first=0.05, backoff_cap=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    ids = emit_lives(store, ["sub_a", "sub_b"])
    ids["sub_b"].append(emit(store, "sub_b", "recovered_after_cancel"))

    deadline = asyncio.get_running_loop().time() + 15
    while outbox.outbox_counts(store)["pending"] and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert receiver.refused > 0  # it was down at first
    assert receiver.ids("sub_a") == ids["sub_a"]
    assert receiver.ids("sub_b") == ids["sub_b"]
    assert receiver.redeliveries == {}


def test_outbound_secret_maps_to_the_standard_webhooks_secret() -> None:
    whsec = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    assert signing_key(whsec) == b"0123456789abcdef"
    assert signing_key(whsec.rstrip("=")) == b"0123456789abcdef"  # unpadded, as some tools print it
    assert signing_key("plain-text secret") == b"plain-text secret"
    with pytest.raises(ValueError, match="outbound_secret"):
        signing_key("whsec_not base64!")
    # a host verifies a raw secret with Webhook(secret.encode()) or Webhook("whsec_" + base64(secret))
    signed = Webhook(signing_key("plain-text secret"))
    now = datetime.now(UTC)
    headers = {"webhook-id": "e1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signed.sign("e1", now, '{"a":1}')}  # fmt: skip
    assert Webhook(b"plain-text secret").verify('{"a":1}', headers) == {"a": 1}
    assert Webhook("whsec_" + base64.b64encode(b"plain-text secret").decode()).verify('{"a":1}', headers) == {"a": 1}


def test_backoff_doubles_from_one_second_to_five_minutes() -> None:
    assert [backoff(n, 1, 300) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff(10_000, 1, 300) == 300


def test_deliverer_from_settings_reads_urls_secret_and_poll(tmp_path) -> None:
    settings = load_settings(
        home=tmp_path, outbound_urls=["http://127.0.0.1:9/x"], outbound_secret=SECRET, outbound_poll_seconds=0.5
    )
    with Store.open(f"sqlite:///{tmp_path / 'd.db'}") as store:
        d = OutboxDeliverer.from_settings(settings, store)
        assert d.urls == ["http://127.0.0.1:9/x"] and d.poll_seconds == 0.5


def test_outbound_list_shows_pending_events_with_their_last_error(tmp_path) -> None:
    db_url = f"sqlite:///{tmp_path / 'dunning.db'}"
    receiver = Receiver(Webhook(SECRET)).start()
    receiver.answer = lambda payload: 503 if payload["subscription_id"] == "sub_down" else 200
    try:
        with Store.open(db_url) as store:
            ok = emit(store, "sub_up", "campaign_started")
            stuck = emit(store, "sub_down", "campaign_started")
            asyncio.run(deliverer(store, [receiver.url]).deliver_due())
    finally:
        receiver.stop()

    def dunning(*args: str) -> subprocess.CompletedProcess:
        env = clean_env(home=tmp_path / "home", database_url=db_url)
        return subprocess.run([*dunning_command(), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    table = dunning("outbound", "list")
    assert table.returncode == 0, table
    assert table.stdout.splitlines()[0].startswith("1 pending (oldest "), table.stdout
    assert table.stdout.splitlines()[0].endswith(", 1 delivered"), table.stdout
    assert ok in table.stdout and stuck in table.stdout
    pending = dunning("outbound", "list", "--pending", "--json")
    assert pending.returncode == 0, pending
    rows = json.loads(pending.stdout)
    assert [(r["event_id"], r["status"], r["attempts"]) for r in rows] == [(stuck, "pending", 1)]
    assert rows[0]["last_error"] == f"url[0] 127.0.0.1:{receiver.port}: HTTP 503"
