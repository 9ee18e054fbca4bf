"""Initial tables: customers, subscriptions, ledger, step deliveries, webhook inbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dunning.store.types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("dunning_campaign_started_at", UTCDateTime(), nullable=True),
        sa.Column("entitlement", sa.String(32), nullable=False, server_default="full"),
        sa.Column("decline_class", sa.String(32), nullable=True),
        sa.Column("last_event_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index(op.f("ix_subscriptions_customer_id"), "subscriptions", ["customer_id"])
    op.create_table(
        "dunning_events",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=False),
        sa.Column("campaign_started_at", UTCDateTime(), nullable=False),
        sa.Column("step_key", sa.String(64), nullable=False, server_default=""),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dunning_events")),
        sa.UniqueConstraint(
            "subscription_id", "campaign_started_at", "type", "step_key", name=op.f("uq_dunning_events_once")
        ),
    )
    op.create_index(
        op.f("ix_dunning_events_subscription_id_occurred_at"), "dunning_events", ["subscription_id", "occurred_at"]
    )
    op.create_table(
        "step_deliveries",
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("campaign_started_at", UTCDateTime(), nullable=False),
        sa.Column("step_key", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint(
            "subscription_id", "campaign_started_at", "step_key", name=op.f("pk_step_deliveries")
        ),
        sa.CheckConstraint("state IN ('claimed', 'sent')", name=op.f("ck_step_deliveries_state")),
    )
    op.create_index(op.f("ix_step_deliveries_state"), "step_deliveries", ["state"])
    op.create_table(
        "inbox",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("subscription_id", sa.String(255), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("dispatched_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
        sa.UniqueConstraint("provider", "event_id", name=op.f("uq_inbox_provider_event_id")),
        sa.CheckConstraint("status IN ('received', 'dispatched', 'ignored')", name=op.f("ck_inbox_status")),
    )
    op.create_index(op.f("ix_inbox_status_received_at"), "inbox", ["status", "received_at"])


def downgrade() -> None:
    for table in ("inbox", "step_deliveries", "dunning_events", "subscriptions", "customers"):
        op.drop_table(table)
