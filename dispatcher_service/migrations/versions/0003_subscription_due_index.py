"""due deliveries of one subscription: a partial index in claim order

While an endpoint is full, claims skip its subscriptions; once it has room again, the
worker claims what of theirs is due through this index, instead of walking every due
delivery of the others in time order to find them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DUE = sa.text("state IN ('pending', 'retrying')")


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deliveries_subscription_due",
            ["subscription_id", "next_attempt_time"],
            unique=False,
            sqlite_where=DUE,
            postgresql_where=DUE,
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_subscription_due")
