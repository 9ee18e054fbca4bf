"""The fake provider's own account state (dunning.providers.fake_account): its status and
latest invoice per subscription, so recompute can read the fake provider like a real one.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dunning.providers.fake_account  # noqa: F401  (the table on `metadata`, for autogenerate)
from dunning.store.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fake_subscriptions",
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("invoice_id", sa.String(255), nullable=True),
        sa.Column("invoice_state", sa.String(16), nullable=True),
        sa.Column("amount_due", sa.Integer(), nullable=True),
        sa.Column("failed_at", UTCDateTime(), nullable=True),
        sa.Column("processing", sa.Boolean(), nullable=False),
        sa.Column("payment_started_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'past_due', 'unpaid', 'canceled', 'trialing', 'incomplete')",
            name=op.f("ck_fake_subscriptions_status"),
        ),
        sa.CheckConstraint(
            "invoice_state IS NULL OR invoice_state IN ('draft', 'open', 'paid', 'void', 'uncollectible')",
            name=op.f("ck_fake_subscriptions_invoice_state"),
        ),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_fake_subscriptions")),
    )


def downgrade() -> None:
    op.drop_table("fake_subscriptions")
