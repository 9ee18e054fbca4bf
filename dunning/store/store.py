"""The engine's door to its database: customers, the subscription projection, the ledger
and step claims. Synchronous; every write is exactly one transaction.

SQLite (default) and PostgreSQL (psycopg 3). Upserts use each dialect's native
`INSERT ... ON CONFLICT`, so a duplicate is never an aborted transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, delete, event, exc, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from dunning.contracts import BillingEvent, Superseded
from dunning.projection import Decision
from dunning.store.schema import customers, dunning_events, inbox, step_deliveries, subscriptions

MAX_DATA_BYTES = 4096
MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATE_LOCK = 0x64756E6E  # pg advisory lock key ("dunn"): one migrator at a time
_READ = "dunning_read"  # execution option: a read-only transaction (plain BEGIN on SQLite)
_LEDGER_KEY = ["subscription_id", "campaign_started_at", "type", "step_key"]
_DELIVERY_KEY = ["subscription_id", "campaign_started_at", "step_key"]
_INBOX_KEY = ["provider", "event_id"]
_PROJECTION_LOCK = 0x70726F6A  # pg advisory lock class ("proj"), keyed by subscription id
EMAIL_MAX, NAME_MAX = 320, 255  # customers.email / customers.name


def _contact(email: str | None, name: str | None) -> tuple[str | None, str | None]:
    """An address and a name as the store keeps them: an over-long address is dropped, a name cut."""
    return (email if email and len(email) <= EMAIL_MAX else None), (name[:NAME_MAX] if name else None)


@dataclass(frozen=True)
class Customer:
    id: str
    email: str | None
    name: str | None


@dataclass(frozen=True)
class Subscription:
    id: str
    customer_id: str
    provider: str
    status: str
    dunning_campaign_started_at: datetime | None
    entitlement: str
    decline_class: str | None
    last_event_at: datetime | None
    last_outcome: str | None = None
    last_campaign_started_at: datetime | None = None


def _sub_cols() -> tuple[Any, ...]:
    s = subscriptions.c
    return (s.id, s.customer_id, s.provider, s.status, s.dunning_campaign_started_at, s.entitlement,
            s.decline_class, s.last_event_at, s.last_outcome, s.last_campaign_started_at)  # fmt: skip


@dataclass(frozen=True)
class EffectClaim:
    """An effect's claim, taken in the same transaction as the check that the campaign is
    still the subscription's: 'claimed' by `owner`, already 'sent', or `stale` (nothing
    claimed, nothing to do)."""

    state: str  # claimed | sent | stale
    owner: str = ""
    stale: Superseded | None = None
    sends: int = 0  # SMTP sends already started for this row (an email's earlier, dead attempts)
    taken_over: bool = False  # the claim was an earlier attempt's, whose result is unknown


@dataclass(frozen=True)
class LedgerEvent:
    type: str
    subscription_id: str
    customer_id: str
    campaign_started_at: datetime
    step_key: str
    data: dict[str, Any]
    occurred_at: datetime


@dataclass(frozen=True)
class InboxRow:
    provider: str
    event_id: str
    event_type: str
    subscription_id: str | None
    occurred_at: datetime
    received_at: datetime
    status: str  # received | dispatched | ignored | parked
    reason: str | None  # dispatched: what dispatch did; ignored: why; received/parked: the last failure
    payload: dict[str, Any]
    dispatched_at: datetime | None
    attempts: int = 0  # dispatches that failed with a non-transient error


def _utc(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} = {value!r}: must be a timezone-aware datetime")
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _bounded(data: dict[str, Any] | None) -> dict[str, Any]:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"data: must be a dict, got {type(data).__name__}")
    try:
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as err:
        raise ValueError(f"data: must be plain JSON ({err})") from None
    if size > MAX_DATA_BYTES:
        raise ValueError(f"data: {size} bytes serialized, the limit is {MAX_DATA_BYTES}")
    return data


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    db = parsed.database or ""
    memory = db in ("", ":memory:") or parsed.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {}
    if memory:
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    elif not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)  # a file's connection does not go stale: no ping

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 5000")
        if not memory:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a read-then-write transaction waits
        # (busy_timeout) instead of failing on a lock upgrade.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ) else "BEGIN IMMEDIATE")

    return engine


IDLE_PING_SECONDS = 30.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a round trip per transaction: a pooled
    connection idle for IDLE_PING_SECONDS is pinged at checkout (a dead one is replaced);
    a busy one is not. A connection that dies under load fails its statement once, and
    SQLAlchemy then invalidates the pool (a retry or the next request reconnects)."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            dbapi_conn.rollback()
        except Exception as err:
            raise exc.DisconnectionError(f"idle connection is dead: {type(err).__name__}") from err


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
        engine = create_engine(parsed, connect_args=connect_args)
        _ping_when_idle(engine)
        return engine
    raise ValueError(
        f"database url {parsed.render_as_string(hide_password=True)!r}: "
        "only sqlite:///PATH and postgresql+psycopg://... are supported"
    )


class Store:
    def __init__(self, url: str) -> None:
        self._engine = _engine(url)
        self._pg = self._engine.dialect.name == "postgresql"
        self._reader = self._engine.execution_options(**{_READ: True})

    @classmethod
    def open(cls, url: str) -> Store:
        store = cls(url)
        store.migrate()
        return store

    @property
    def engine(self) -> Engine:
        return self._engine

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # --- lifecycle ---------------------------------------------------------------------
    def migrate(self) -> None:
        """Upgrade to the newest schema. Idempotent; concurrent callers run one at a time."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.write() as conn:
            if self._pg:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(text("SELECT 1")).one()

    def dispose(self) -> None:
        self._engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction (also for the table-family modules in dunning/store/)."""
        with self._engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT (with ON CONFLICT)."""
        return pg_insert(table) if self._pg else sqlite_insert(table)

    # --- customers ---------------------------------------------------------------------
    def upsert_customer(self, id: str, email: str | None = None, name: str | None = None) -> None:
        now = _now()
        ins = self.insert(customers).values(id=id, email=email, name=name, updated_at=now)
        stmt = ins.on_conflict_do_update(
            index_elements=[customers.c.id],
            set_={
                "email": func.coalesce(ins.excluded.email, customers.c.email),
                "name": func.coalesce(ins.excluded.name, customers.c.name),
                "updated_at": now,
            },
        )
        with self.write() as conn:
            conn.execute(stmt)

    def get_customer(self, id: str) -> Customer | None:
        with self._reader.connect() as conn:
            row = conn.execute(
                select(customers.c.id, customers.c.email, customers.c.name).where(customers.c.id == id)
            ).first()
        return Customer(*row) if row else None

    # --- subscription projection -------------------------------------------------------
    def get_subscription(self, id: str) -> Subscription | None:
        with self._reader.connect() as conn:
            row = conn.execute(select(*_sub_cols()).where(subscriptions.c.id == id)).first()
        return Subscription(*row) if row else None

    def lock_subscription(self, conn: Connection, id: str) -> None:
        """Serialize this transaction with every other decision about subscription `id`
        (PostgreSQL: an advisory lock on the id, held even while no row exists; SQLite:
        BEGIN IMMEDIATE already holds the database's write lock)."""
        if self._pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:cls, hashtext(:id))"), {"cls": _PROJECTION_LOCK, "id": id})

    def locked_subscription(self, conn: Connection, id: str) -> Subscription | None:
        """The row, locked for the rest of the transaction (PostgreSQL: FOR UPDATE;
        SQLite: the write transaction already holds the database lock)."""
        query = select(*_sub_cols()).where(subscriptions.c.id == id)
        row = conn.execute(query.with_for_update() if self._pg else query).first()
        return Subscription(*row) if row else None

    # --- ledger ------------------------------------------------------------------------
    def ledger_insert(self, **values: Any) -> Any:
        return self.insert(dunning_events).values(**values).on_conflict_do_nothing(index_elements=_LEDGER_KEY)

    def record_event(
        self,
        type: str,
        subscription_id: str,
        customer_id: str,
        campaign_started_at: datetime,
        occurred_at: datetime,
        step_key: str = "",
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Append to the ledger. False if that (subscription, campaign, type, step) exists."""
        stmt = self.ledger_insert(
            type=type, subscription_id=subscription_id, customer_id=customer_id,
            campaign_started_at=_utc("campaign_started_at", campaign_started_at), step_key=step_key,
            data=_bounded(data), occurred_at=_utc("occurred_at", occurred_at), recorded_at=_now(),
        )  # fmt: skip
        with self.write() as conn:  # RETURNING, since rowcount is -1 with it on psycopg
            return conn.execute(stmt.returning(dunning_events.c.id)).first() is not None

    def events(self, subscription_id: str, campaign_started_at: datetime | None = None) -> list[LedgerEvent]:
        e = dunning_events.c
        query = select(e.type, e.subscription_id, e.customer_id, e.campaign_started_at, e.step_key, e.data,
                       e.occurred_at).where(e.subscription_id == subscription_id)  # fmt: skip
        if campaign_started_at is not None:
            query = query.where(e.campaign_started_at == _utc("campaign_started_at", campaign_started_at))
        with self._reader.connect() as conn:
            rows = conn.execute(query.order_by(e.occurred_at, e.id)).all()
        return [LedgerEvent(*row) for row in rows]

    def ledger_data(self, subscription_id: str, campaign_started_at: datetime, type: str, step_key: str = "") -> dict:
        """One ledger row's data by its unique key ({} when there is none)."""
        e = dunning_events.c
        query = select(e.data).where(
            e.subscription_id == subscription_id, e.campaign_started_at == _utc("campaign_started_at", campaign_started_at),
            e.type == type, e.step_key == step_key,
        )  # fmt: skip
        with self._reader.connect() as conn:
            found = conn.execute(query).scalar()
        return found if isinstance(found, dict) else {}

    # --- step deliveries ---------------------------------------------------------------
    def delivery(self, subscription_id: str, campaign_started_at: datetime, step_key: str) -> Any:
        d = step_deliveries.c
        return (d.subscription_id == subscription_id) & (d.campaign_started_at == campaign_started_at) & (
            d.step_key == step_key
        )

    def claim_insert(
        self, subscription_id: str, campaign_started_at: datetime, step_key: str, message_id: str, claimed_by: str,
        at: datetime,
    ) -> Any:
        """INSERT of a 'claimed' delivery row (nothing when the row exists)."""
        return self.insert(step_deliveries).values(
            subscription_id=subscription_id, campaign_started_at=_utc("campaign_started_at", campaign_started_at),
            step_key=step_key, state="claimed", message_id=message_id, claimed_by=claimed_by, claimed_at=_utc("at", at),
        ).on_conflict_do_nothing(index_elements=_DELIVERY_KEY)  # fmt: skip

    def claim_step(
        self,
        subscription_id: str,
        campaign_started_at: datetime,
        step_key: str,
        message_id: str,
        claimed_by: str,
        at: datetime,
    ) -> tuple[str, str]:
        """Claim a step before sending it. Returns the row's (state, claimed_by) after the
        call: ('claimed', claimed_by) if this call made the claim, else the existing row's."""
        started = _utc("campaign_started_at", campaign_started_at)
        ins = self.claim_insert(subscription_id, started, step_key, message_id, claimed_by, at)
        d = step_deliveries.c
        with self.write() as conn:
            conn.execute(ins)
            row = conn.execute(
                select(d.state, d.claimed_by).where(self.delivery(subscription_id, started, step_key))
            ).one()
        return (row.state, row.claimed_by)

    def release_claim(
        self, subscription_id: str, campaign_started_at: datetime, step_key: str, claimed_by: str
    ) -> None:
        """Drop a claim this attempt holds (the send surely failed); a 'sent' row stays."""
        started = _utc("campaign_started_at", campaign_started_at)
        d = step_deliveries.c
        stmt = delete(step_deliveries).where(
            self.delivery(subscription_id, started, step_key), d.state == "claimed", d.claimed_by == claimed_by
        )
        with self.write() as conn:
            conn.execute(stmt)

    def mark_step_sent(
        self,
        subscription_id: str,
        customer_id: str,
        campaign_started_at: datetime,
        step_key: str,
        message_id: str,
        at: datetime,
        ledger_type: str | None = "dunning.step_sent",
        data: dict[str, Any] | None = None,
    ) -> None:
        """One transaction: the delivery becomes 'sent' and the ledger gets its single
        `ledger_type` row (`dunning.step_sent`, or `dunning.retry_attempted` for a claimed
        payment retry). Idempotent: a repeat changes nothing. Without a prior claim the
        delivery row is created 'sent' with an empty claimed_by."""
        started, at = _utc("campaign_started_at", campaign_started_at), _utc("at", at)
        ins = self.insert(step_deliveries).values(
            subscription_id=subscription_id, campaign_started_at=started, step_key=step_key, state="sent",
            message_id=message_id, claimed_by="", claimed_at=at, sent_at=at,
        )  # fmt: skip
        upsert = ins.on_conflict_do_update(
            index_elements=_DELIVERY_KEY,
            set_={"state": "sent", "message_id": message_id, "sent_at": at},
            where=step_deliveries.c.state == "claimed",
        )
        ledger = self.ledger_insert(
            type=ledger_type or "", subscription_id=subscription_id, customer_id=customer_id,
            campaign_started_at=started, step_key=step_key, data={"message_id": message_id, **(data or {})},
            occurred_at=at, recorded_at=_now(),
        )  # fmt: skip
        with self.write() as conn:
            conn.execute(upsert)
            if ledger_type is not None:
                conn.execute(ledger)

    def delivery_counts(self) -> dict[str, int]:
        """For /metrics: claims not (yet) confirmed sent, and extra SMTP sends of steps
        (copies that may have reached a customer twice, always with one Message-ID)."""
        d = step_deliveries.c
        query = select(
            func.count().filter(d.state == "claimed"),
            func.coalesce(func.sum(d.sends - 1).filter(d.sends > 1), 0),
        )
        with self._reader.connect() as conn:
            unconfirmed, resends = conn.execute(query).one()
        return {"unconfirmed": int(unconfirmed), "resends": int(resends)}

    def ledger_counts(self, *types: str) -> dict[str, int]:
        """How many ledger rows of each type (e.g. dunning.action_failed)."""
        e = dunning_events.c
        query = select(e.type, func.count()).where(e.type.in_(types)).group_by(e.type)
        with self._reader.connect() as conn:
            found = {t: int(n) for t, n in conn.execute(query).all()}
        return {t: found.get(t, 0) for t in types}

    def unconfirmed_deliveries(self) -> list[tuple[str, datetime, str]]:
        """(subscription_id, campaign_started_at, step_key) of claims never marked sent."""
        d = step_deliveries.c
        query = select(d.subscription_id, d.campaign_started_at, d.step_key).where(d.state == "claimed")
        with self._reader.connect() as conn:
            rows = conn.execute(query.order_by(d.claimed_at, d.subscription_id, d.step_key)).all()
        return [tuple(row) for row in rows]  # type: ignore[misc]

    # --- webhook inbox -----------------------------------------------------------------
    def inbox_receive(
        self,
        provider: str,
        event_id: str,
        event_type: str,
        subscription_id: str | None,
        occurred_at: datetime,
        payload: dict[str, Any],
        *,
        customer_email: str | None = None,
        customer_name: str | None = None,
    ) -> str:
        """Record a verified event once per (provider, event_id). Returns 'new' when this
        call recorded it, else the existing row's status: 'received' (seen, not yet
        dispatched), 'dispatched', 'ignored' or 'parked'.

        The customer's email and name go into the row's own columns (never `payload`,
        which reaches Temporal), in the row's transaction: a later dispatch of this row
        (the sweep, a redelivery) can always reach the customer. A redelivery that carries
        them fills a row that lacks them."""
        email, name = _contact(customer_email, customer_name)
        stmt = self.insert(inbox).values(
            provider=provider, event_id=event_id, event_type=event_type, subscription_id=subscription_id,
            occurred_at=_utc("occurred_at", occurred_at), received_at=_now(), status="received",
            payload=payload, customer_email=email, customer_name=name,
        ).on_conflict_do_nothing(index_elements=_INBOX_KEY)  # fmt: skip
        i = inbox.c
        where = (i.provider == provider) & (i.event_id == event_id)
        with self.write() as conn:
            if conn.execute(stmt.returning(i.id)).first() is not None:
                return "new"
            if email is not None or name is not None:
                filled = {"customer_email": func.coalesce(i.customer_email, email),
                          "customer_name": func.coalesce(i.customer_name, name)}  # fmt: skip
                conn.execute(update(inbox).where(where & (i.status == "received")).values(**filled))
            return conn.execute(select(i.status).where(where)).scalar_one()

    def inbox_ignore(
        self,
        provider: str,
        event_id: str,
        event_type: str,
        reason: str,
        subscription_id: str | None = None,
        occurred_at: datetime | None = None,
        payload: dict[str, Any] | None = None,
    ) -> bool:
        """Record a verified event the engine does not act on. False if already recorded."""
        now = _now()
        stmt = self.insert(inbox).values(
            provider=provider, event_id=event_id, event_type=event_type, subscription_id=subscription_id,
            occurred_at=_utc("occurred_at", occurred_at) if occurred_at else now, received_at=now,
            status="ignored", reason=reason, payload=payload or {},
        ).on_conflict_do_nothing(index_elements=_INBOX_KEY)  # fmt: skip
        with self.write() as conn:
            return conn.execute(stmt.returning(inbox.c.id)).first() is not None

    def inbox_mark_dispatched(self, provider: str, event_id: str, reason: str | None = None) -> bool:
        """received -> dispatched. False if the row was not 'received' (already done)."""
        return self.inbox_mark_dispatched_many([(provider, event_id, reason)])[0]

    def inbox_mark_dispatched_many(self, marks: list[tuple[str, str, str | None]]) -> list[bool]:
        """`inbox_mark_dispatched` for several (provider, event_id, reason) in one transaction."""
        i = inbox.c
        now = _now()
        out = []
        with self.write() as conn:
            for provider, event_id, reason in marks:
                values: dict[str, Any] = {"status": "dispatched", "dispatched_at": now}
                if reason is not None:
                    values["reason"] = reason
                where = (i.provider == provider) & (i.event_id == event_id) & (i.status == "received")
                out.append(conn.execute(update(inbox).where(where).values(**values)).rowcount == 1)
        return out

    def inbox_get(self, provider: str, event_id: str) -> InboxRow | None:
        with self._reader.connect() as conn:
            row = conn.execute(
                select(*self._inbox_cols()).where(inbox.c.provider == provider, inbox.c.event_id == event_id)
            ).first()
        return InboxRow(*row) if row else None

    def inbox_undispatched(self, older_than: datetime, limit: int = 100) -> list[InboxRow]:
        """'received' rows received at or before `older_than`: rows that never failed first
        (so rows that keep failing never starve them), then oldest event first. Parked
        rows are never returned."""
        i = inbox.c
        query = (
            select(*self._inbox_cols())
            .where(i.status == "received", i.received_at <= _utc("older_than", older_than))
            .order_by(i.attempts, i.occurred_at, i.id)
            .limit(limit)
        )
        with self._reader.connect() as conn:
            return [InboxRow(*row) for row in conn.execute(query).all()]

    @staticmethod
    def _inbox_cols() -> tuple[Any, ...]:
        i = inbox.c
        return (i.provider, i.event_id, i.event_type, i.subscription_id, i.occurred_at, i.received_at, i.status,
                i.reason, i.payload, i.dispatched_at, i.attempts)  # fmt: skip

    # --- projection from billing events -------------------------------------------------
    def apply_projection(
        self, event: BillingEvent, decide_fn: Callable[[Subscription | None, BillingEvent], Decision]
    ) -> Decision:
        """Read the subscription, decide, write the decision: one transaction, serialized
        per subscription (SQLite: the write lock; PostgreSQL: an advisory lock on the id
        and the row locked FOR UPDATE), so two deliveries can never both start.

        When the event has an inbox row, the decision is stored in its payload
        (`payload["decision"]`) in the same transaction, and a second call for the same
        event returns that stored decision without deciding again: a redelivery or the
        sweep re-dispatches exactly what was decided. The customer's email and name go to
        the customers table only (not from a stale event): from the event, else from the
        inbox row's own columns (the sweep's stored event carries none)."""
        if not event.subscription_id:
            raise ValueError(f"event {event.event_id!r} names no subscription")
        sub_id = event.subscription_id
        i = inbox.c
        with self.write() as conn:
            self.lock_subscription(conn, sub_id)
            where_inbox = (i.provider == event.provider) & (i.event_id == event.event_id)
            stored = conn.execute(select(i.payload, i.customer_email, i.customer_name).where(where_inbox)).first()
            if stored is not None and (event.customer_email is None or event.customer_name is None):
                contact = {"customer_email": event.customer_email or stored.customer_email,
                           "customer_name": event.customer_name or stored.customer_name}  # fmt: skip
                event = event.model_copy(update=contact)
            if stored is not None and isinstance(stored.payload, dict) and stored.payload.get("decision"):
                decided = Decision.model_validate(stored.payload["decision"])
                if decided.action != "stale":  # a redelivery may carry the email the stored event lacks
                    self._customer_from_event(conn, decided.customer_id, event)
                return decided
            decision = decide_fn(self.locked_subscription(conn, sub_id), event)
            if decision.write:
                self.write_projection(conn, decision)
            if decision.action != "stale":
                self._customer_from_event(conn, decision.customer_id, event)
            if stored is not None:
                payload = dict(stored.payload) if isinstance(stored.payload, dict) else {}
                payload["decision"] = decision.model_dump(mode="json")
                conn.execute(update(inbox).where(where_inbox).values(payload=payload))
        return decision

    def receive_and_decide(
        self,
        event: BillingEvent,
        payload: dict[str, Any],
        decide_fn: Callable[[Subscription | None, BillingEvent], Decision],
    ) -> Decision | None:
        """The common case of the receive path in ONE transaction: a new event's inbox row
        with its decision on it, the projection and the customer's contact (what
        `inbox_receive` then `apply_projection` do in two). A decision with nothing to send
        ('none', 'stale') is recorded dispatched in the same transaction. Returns None, having
        written nothing, for an event the inbox has seen before: the caller takes the
        redelivery path."""
        if not event.subscription_id:
            raise ValueError(f"event {event.event_id!r} names no subscription")
        i = inbox.c
        email, name = _contact(event.customer_email, event.customer_name)
        with self.write() as conn:
            self.lock_subscription(conn, event.subscription_id)  # the same event is this subscription's
            seen = select(i.id).where(i.provider == event.provider, i.event_id == event.event_id)
            if conn.execute(seen).first() is not None:
                return None
            decision = decide_fn(self.locked_subscription(conn, event.subscription_id), event)
            now = _now()
            done = decision.action in ("none", "stale")
            row = self.insert(inbox).values(
                provider=event.provider, event_id=event.event_id, event_type=event.event_type,
                subscription_id=event.subscription_id, occurred_at=_utc("occurred_at", event.occurred_at),
                received_at=now, status="dispatched" if done else "received", reason="nothing" if done else None,
                dispatched_at=now if done else None, payload={**payload, "decision": decision.model_dump(mode="json")},
                customer_email=email, customer_name=name,
            )  # fmt: skip
            conn.execute(row)
            if decision.write:
                self.write_projection(conn, decision)
            if decision.action != "stale":
                self._customer_from_event(conn, decision.customer_id, event)
        return decision

    def write_projection(self, conn: Connection, d: Decision) -> None:
        now = _now()
        values = {
            "customer_id": d.customer_id, "provider": d.provider, "status": d.status,
            "dunning_campaign_started_at": _utc("anchor", d.anchor) if d.anchor else None,
            "decline_class": d.decline_class,
            "last_event_at": _utc("last_event_at", d.last_event_at) if d.last_event_at else None,
            "updated_at": now,
        }  # fmt: skip
        ins = self.insert(subscriptions).values(id=d.subscription_id, **values)
        conn.execute(ins.on_conflict_do_update(index_elements=[subscriptions.c.id], set_=values))

    def _customer_from_event(self, conn: Connection, customer_id: str, event: BillingEvent) -> None:
        email, name = _contact(event.customer_email, event.customer_name)
        if email is None and name is None:
            return
        now = _now()
        ins = self.insert(customers).values(id=customer_id, email=email, name=name, updated_at=now)
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[customers.c.id],
                set_={
                    "email": func.coalesce(ins.excluded.email, customers.c.email),
                    "name": func.coalesce(ins.excluded.name, customers.c.name),
                    "updated_at": now,
                },
            )
        )
