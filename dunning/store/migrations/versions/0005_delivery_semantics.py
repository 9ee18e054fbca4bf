"""Delivery semantics: the inbox keeps the customer's contact in its own columns and
counts failed dispatches (poison rows are 'parked'); a delivery counts its SMTP sends;
a durable outbox of events for host apps.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dunning.store.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("customer_email", sa.String(320), nullable=True))
        batch.add_column(sa.Column("customer_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint(op.f("ck_inbox_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_inbox_status"), "status IN ('received', 'dispatched', 'ignored', 'parked')"
        )
    with op.batch_alter_table("step_deliveries") as batch:
        batch.add_column(sa.Column("sends", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "outbound_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_outbound_events_event_id")),
        sa.CheckConstraint("status IN ('pending', 'delivered')", name=op.f("ck_outbound_events_status")),
    )
    op.create_index(op.f("ix_outbound_events_status_next_attempt_at"), "outbound_events", ["status", "next_attempt_at"])
    op.create_index(op.f("ix_outbound_events_subscription_id_id"), "outbound_events", ["subscription_id", "id"])


def downgrade() -> None:
    op.drop_table("outbound_events")
    with op.batch_alter_table("step_deliveries") as batch:
        batch.drop_column("sends")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_constraint(op.f("ck_inbox_status"), type_="check")
        batch.create_check_constraint(op.f("ck_inbox_status"), "status IN ('received', 'dispatched', 'ignored')")
        batch.drop_column("attempts")
        batch.drop_column("customer_name")
        batch.drop_column("customer_email")
