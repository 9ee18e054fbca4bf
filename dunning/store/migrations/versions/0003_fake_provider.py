"""Fake provider state: scripted cards and recorded calls (dunning.providers.fake_state).

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The tables are defined in dunning.providers.fake_state on the store's metadata; importing
# it here puts them on `metadata` whenever migrations are loaded, so autogenerate and the
# schema comparison see them.
import dunning.providers.fake_state  # noqa: F401
from dunning.store.types import UTCDateTime

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fake_cards",
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(80), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_fake_cards")),
    )
    op.create_table(
        "fake_provider_calls",
        sa.Column("id", Id, nullable=False, autoincrement=True),
        sa.Column("subscription_id", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("result", sa.String(80), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fake_provider_calls")),
        sa.UniqueConstraint("action", "idempotency_key", name=op.f("uq_fake_provider_calls_action_idempotency_key")),
        sa.CheckConstraint(
            "action IN ('charge', 'cancel', 'mark_unpaid')", name=op.f("ck_fake_provider_calls_action")
        ),
    )
    op.create_index(
        op.f("ix_fake_provider_calls_subscription_id_at"), "fake_provider_calls", ["subscription_id", "at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_fake_provider_calls_subscription_id_at"), table_name="fake_provider_calls")
    op.drop_table("fake_provider_calls")
    op.drop_table("fake_cards")
