"""due deliveries of one subscription: a partial index in claim order

While an endpoint is full, claims skip its subscriptions; once it has room again, the
worker claims what of theirs is due through this index, instead of walking every due
delivery of the others in time order to find them.

Building it holds up writes to deliveries on PostgreSQL while it runs; a large table can
have it built beforehand with CREATE INDEX CONCURRENTLY (see the README), and then this
finds it there.

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
    op.create_index(
        "ix_deliveries_subscription_due",
        "deliveries",
        ["subscription_id", "next_attempt_time"],
        unique=False,
        sqlite_where=DUE,
        postgresql_where=DUE,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_subscription_due", table_name="deliveries")
