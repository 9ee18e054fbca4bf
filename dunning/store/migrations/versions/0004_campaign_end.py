"""A campaign's end on the subscription row: its outcome and anchor, so a payment after
the terminal action is recognised and the host app's answer matches the campaign.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dunning.store.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("last_outcome", sa.String(32), nullable=True))
        batch.add_column(sa.Column("last_campaign_started_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("last_campaign_started_at")
        batch.drop_column("last_outcome")
