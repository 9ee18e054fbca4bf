"""The tables, as SQLAlchemy Core. Migrations in `migrations/versions` must match this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from dunning.store.types import UTCDateTime

# Deterministic constraint names on every backend, so migrations can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# SQLite only autoincrements an `INTEGER PRIMARY KEY`.
Id = BigInteger().with_variant(Integer(), "sqlite")

customers = Table(
    "customers",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("email", String(320), nullable=True),
    Column("name", String(255), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("customer_id", String(255), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("status", String(32), nullable=False),
    Column("dunning_campaign_started_at", UTCDateTime(), nullable=True),
    Column("entitlement", String(32), nullable=False, server_default="full"),
    Column("decline_class", String(32), nullable=True),
    Column("last_event_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    # written by a campaign's end (one transaction with its ledger row and entitlement)
    Column("last_outcome", String(32), nullable=True),
    Column("last_campaign_started_at", UTCDateTime(), nullable=True),
    Index(None, "customer_id"),
)

# Append-only ledger. The unique key makes every write idempotent and a step sent
# at most once per campaign identity (subscription_id, campaign_started_at).
dunning_events = Table(
    "dunning_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("subscription_id", String(255), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("campaign_started_at", UTCDateTime(), nullable=False),
    Column("step_key", String(64), nullable=False, server_default=""),
    Column("data", JSON(), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    UniqueConstraint("subscription_id", "campaign_started_at", "type", "step_key", name="uq_dunning_events_once"),
    Index(None, "subscription_id", "occurred_at"),
)

# Claim before send: a row still 'claimed' after a crash is visible, never resent blindly.
step_deliveries = Table(
    "step_deliveries",
    metadata,
    Column("subscription_id", String(255), nullable=False),
    Column("campaign_started_at", UTCDateTime(), nullable=False),
    Column("step_key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("claimed_by", String(255), nullable=False),
    Column("claimed_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    # SMTP sends started for this row: more than 1 means a resend after an attempt whose
    # result was unknown (same Message-ID); counted in the resend metric
    Column("sends", Integer(), nullable=False, server_default="0"),
    PrimaryKeyConstraint("subscription_id", "campaign_started_at", "step_key"),
    CheckConstraint("state IN ('claimed', 'sent')", name="state"),
    Index(None, "state"),
)

# Webhook inbox: one row per provider event, whatever happens to it next.
inbox = Table(
    "inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("subscription_id", String(255), nullable=True),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text(), nullable=True),
    Column("payload", JSON(), nullable=False),
    Column("dispatched_at", UTCDateTime(), nullable=True),
    # what a later dispatch needs that the workflow must never see (PII stays in the store)
    Column("customer_email", String(320), nullable=True),
    Column("customer_name", String(255), nullable=True),
    # failed dispatches; after the configured number the row is 'parked' with the reason
    Column("attempts", Integer(), nullable=False, server_default="0"),
    UniqueConstraint("provider", "event_id"),
    CheckConstraint("status IN ('received', 'dispatched', 'ignored', 'parked')", name="status"),
    Index(None, "status", "received_at"),
)

# Durable outbox of events for host apps: written in the transaction that writes the
# fact it reports, delivered by its own retrying process, in order per subscription.
outbound_events = Table(
    "outbound_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(255), nullable=False),
    Column("type", String(64), nullable=False),
    Column("subscription_id", String(255), nullable=False),
    Column("payload", JSON(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer(), nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    UniqueConstraint("event_id"),
    CheckConstraint("status IN ('pending', 'delivered')", name="status"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "subscription_id", "id"),
)
