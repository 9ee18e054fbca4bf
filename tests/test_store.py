"""Store on SQLite and PostgreSQL: every test here runs on both (see tests/db_fixtures.py)."""

from __future__ import annotations

import ast
import re
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from dunning.contracts import BillingEvent, EventKind
from dunning.projection import decide
from dunning.store.schema import dunning_events, metadata, step_deliveries
from dunning.store.store import MAX_DATA_BYTES, Customer, Store
from dunning.store.types import UTCDateTime

T0 = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)
PLUS2 = timezone(timedelta(hours=2))
REPO = Path(__file__).parents[1]
PACKAGES = ("dunning", "activities", "workflows", "worker", "starter")
STORE_DIR = REPO / "dunning" / "store"


def _failed(at: datetime) -> BillingEvent:
    """A payment failure for sub_1: the real way a subscription enters dunning."""
    return BillingEvent(
        provider="fake", event_id="evt_1", event_type="payment.failed", kind=EventKind.payment_failed,
        occurred_at=at, subscription_id="sub_1", customer_id="cus_1", customer_email="a@example.com",
    )  # fmt: skip


def _count(store: Store, table, **where) -> int:
    query = select(func.count()).select_from(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with store.engine.connect() as conn:
        return conn.execute(query).scalar_one()


# --- lifecycle -------------------------------------------------------------------------
def test_migrate_twice_and_schema_matches_metadata(db_url):
    store = Store.open(db_url)
    store.migrate()
    store.migrate()
    store.ping()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.dispose()
    again = Store.open(db_url)  # a second process opening the same database
    again.ping()
    again.dispose()


def test_sqlite_parent_dir_is_created(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    store.ping()
    assert (tmp_path / "a" / "b" / "x.db").is_file()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    store.dispose()


def test_ping_raises_when_unreachable():
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/nothing?connect_timeout=1")
    with pytest.raises(Exception):
        store.ping()
    store.dispose()


def test_unsupported_url_is_refused():
    with pytest.raises(ValueError, match="only sqlite"):
        Store("mysql://x@localhost/db")


# --- customers -------------------------------------------------------------------------
def test_customer_round_trip_and_none_never_overwrites(store):
    assert store.get_customer("cus_1") is None
    store.upsert_customer("cus_1", email="a@example.com", name="Ada")
    store.upsert_customer("cus_1")
    assert store.get_customer("cus_1") == Customer("cus_1", "a@example.com", "Ada")
    store.upsert_customer("cus_1", email="b@example.com")
    assert store.get_customer("cus_1") == Customer("cus_1", "b@example.com", "Ada")
    store.upsert_customer("cus_2", name="Bo")
    assert store.get_customer("cus_2") == Customer("cus_2", None, "Bo")


# --- ledger ----------------------------------------------------------------------------
def test_ledger_is_unique_per_campaign_type_and_step(store):
    args = ("dunning.step_sent", "sub_1", "cus_1", T0, T0)
    assert store.record_event(*args, step_key="first_notice", data={"message_id": "m1"}) is True
    assert store.record_event(*args, step_key="first_notice", data={"message_id": "m2"}) is False
    assert store.record_event(*args, step_key="reminder") is True
    second = T0 + timedelta(days=60)
    assert store.record_event("dunning.step_sent", "sub_1", "cus_1", second, second, step_key="first_notice")
    assert store.record_event("dunning.campaign_started", "sub_1", "cus_1", T0, T0 - timedelta(seconds=1))
    assert store.record_event("dunning.campaign_started", "sub_1", "cus_1", T0, T0) is False

    first = store.events("sub_1", T0)
    assert [(e.type, e.step_key) for e in first] == [
        ("dunning.campaign_started", ""),
        ("dunning.step_sent", "first_notice"),
        ("dunning.step_sent", "reminder"),
    ]
    assert first[1].data == {"message_id": "m1"} and first[0].data == {}
    assert len(store.events("sub_1")) == 4
    assert store.events("sub_1", second)[0].campaign_started_at == second
    assert store.events("sub_other") == []


def test_datetimes_round_trip_tz_aware_utc(store):
    anchor = datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=PLUS2)
    store.apply_projection(_failed(anchor), decide)
    store.record_event("dunning.campaign_started", "sub_1", "cus_1", anchor, anchor.astimezone(UTC))
    sub = store.get_subscription("sub_1")
    assert (sub.status, sub.customer_id) == ("past_due", "cus_1")
    [event] = store.events("sub_1", anchor)
    for value in (sub.dunning_campaign_started_at, sub.last_event_at, event.campaign_started_at, event.occurred_at):
        assert value == anchor
        assert value.utcoffset() == timedelta(0)
        assert value.tzinfo is not None and value.microsecond == 999999


def test_naive_datetimes_are_refused(store):
    naive = datetime(2025, 1, 1, 12, 0)
    event = _failed(naive)  # the model takes a naive time as given; the store refuses it
    assert event.occurred_at.tzinfo is None
    with pytest.raises(ValueError, match="timezone-aware"):
        store.apply_projection(event, decide)
    with pytest.raises(ValueError):
        store.record_event("dunning.recovered", "sub_1", "cus_1", T0, naive)
    with pytest.raises(ValueError):
        store.claim_step("sub_1", naive, "first_notice", "m", "a", T0)
    with pytest.raises(ValueError):
        UTCDateTime().process_bind_param(naive, store.engine.dialect)
    assert store.get_subscription("sub_1") is None and store.events("sub_1") == []
    assert _count(store, step_deliveries) == 0
    assert store.get_customer("cus_1") is None


def test_oversized_or_non_json_data_is_refused_and_nothing_written(store):
    args = ("dunning.retry_attempted", "sub_1", "cus_1", T0, T0)
    with pytest.raises(ValueError, match="limit"):
        store.record_event(*args, data={"blob": "x" * MAX_DATA_BYTES})
    with pytest.raises(ValueError):
        store.record_event(*args, data={"when": T0})
    with pytest.raises(ValueError):
        store.record_event(*args, data={"x": float("nan")})
    assert _count(store, dunning_events) == 0
    assert store.record_event(*args, data={"blob": "x" * (MAX_DATA_BYTES - 20)}) is True


# --- step claims -----------------------------------------------------------------------
def test_claim_release_and_reclaim(store):
    key = ("sub_1", T0, "first_notice")
    assert store.claim_step(*key, "msg-1", "attempt-a", T0) == ("claimed", "attempt-a")
    assert store.claim_step(*key, "msg-1", "attempt-b", T0) == ("claimed", "attempt-a")
    assert store.unconfirmed_deliveries() == [key]
    store.release_claim(*key, "attempt-b")  # not the owner: no effect
    assert store.unconfirmed_deliveries() == [key]
    store.release_claim(*key, "attempt-a")
    assert store.unconfirmed_deliveries() == []
    assert store.claim_step(*key, "msg-1", "attempt-b", T0) == ("claimed", "attempt-b")
    # another campaign of the same subscription is another identity
    assert store.claim_step("sub_1", T0 + timedelta(days=1), "first_notice", "m", "c", T0) == ("claimed", "c")


def test_mark_step_sent_is_one_ledger_row_and_idempotent(store):
    key = ("sub_1", T0, "reminder")
    store.claim_step(*key, "msg-1", "attempt-a", T0)
    sent_at = T0 + timedelta(minutes=1)
    store.mark_step_sent("sub_1", "cus_1", T0, "reminder", "msg-1", sent_at)
    store.mark_step_sent("sub_1", "cus_1", T0, "reminder", "msg-1", sent_at + timedelta(minutes=1))
    [event] = store.events("sub_1")
    assert (event.type, event.step_key, event.data, event.occurred_at) == (
        "dunning.step_sent", "reminder", {"message_id": "msg-1"}, sent_at,
    )  # fmt: skip
    assert store.unconfirmed_deliveries() == []
    assert store.claim_step(*key, "msg-2", "attempt-b", T0) == ("sent", "attempt-a")
    store.release_claim(*key, "attempt-a")  # a sent row is never released
    assert _count(store, step_deliveries, state="sent") == 1
    with store.engine.connect() as conn:
        assert conn.execute(select(step_deliveries.c.sent_at)).scalar_one() == sent_at


def test_mark_step_sent_without_claim(store):
    store.mark_step_sent("sub_1", "cus_1", T0, "first_notice", "msg-1", T0)
    assert store.claim_step("sub_1", T0, "first_notice", "m", "late", T0) == ("sent", "")
    assert len(store.events("sub_1")) == 1


def test_concurrent_claims_have_one_winner(store):
    results: list[tuple[str, str]] = []
    barrier = threading.Barrier(6)

    def claim(token: str) -> None:
        barrier.wait()
        results.append(store.claim_step("sub_1", T0, "first_notice", "msg", token, T0))

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    assert _count(store, step_deliveries) == 1


# --- the store is the only writer of subscriptions -------------------------------------
_WRITES = [
    re.compile(r"(?:update|insert|delete)\(\s*subscriptions\b"),  # Core; also store._insert(...)
    re.compile(r"\bUPDATE\s+subscriptions\b", re.IGNORECASE),
    re.compile(r"\bINSERT\s+INTO\s+subscriptions\b", re.IGNORECASE),
]


def _subscription_writes(source: str) -> list[str]:
    """What in `source` writes the subscriptions table or imports its Table object."""
    found = [m.group(0) for rx in _WRITES for m in rx.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("store.schema"):
            found += [f"from {node.module} import subscriptions" for a in node.names if a.name == "subscriptions"]
        elif isinstance(node, ast.Attribute) and node.attr == "subscriptions":
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "schema") or ast.unparse(base).endswith("store.schema"):
                found.append(ast.unparse(node))
    return found


def test_no_module_writes_subscriptions_outside_the_store():
    """Status, anchor and entitlement have their writers in dunning/store/ only (projection
    decisions and the campaign's own transactions): no other module may write the table."""
    # the scanner itself catches each form it is meant to catch
    for bad in (
        "conn.execute(update(subscriptions).values(status='active'))",
        "store.insert(subscriptions).values(id='x')",
        "store._insert(subscriptions).values(id='x')",
        "delete(subscriptions)",
        'conn.exec_driver_sql("update  Subscriptions set status = \'active\'")',
        'text("insert into subscriptions (id) values (1)")',
        "from dunning.store.schema import customers, subscriptions",
        "from dunning.store.schema import (\n    inbox,\n    subscriptions,\n)",
        "from dunning.store import schema\nschema.subscriptions",
    ):
        assert _subscription_writes(bad), bad
    assert _subscription_writes("from dunning.store.schema import inbox\nstore.get_subscription('x')") == []

    files = [f for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*.py"))]
    outside = [f for f in files if not f.is_relative_to(STORE_DIR)]
    assert outside and len(outside) < len(files)  # the walk found the packages and the store
    offenders = {
        str(f.relative_to(REPO)): hits for f in outside if (hits := _subscription_writes(f.read_text(encoding="utf-8")))
    }
    assert offenders == {}
