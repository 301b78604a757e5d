"""due deliveries: a partial index in claim order

The claim walks due deliveries oldest first. An index on (state, next_attempt_time)
made it read and sort every due row for each claim, so a claim slowed down with the
backlog; an index on next_attempt_time over due rows only lets it stop after the rows
it takes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DUE = sa.text("state IN ('pending', 'retrying')")


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index(
            "ix_deliveries_due",
            ["next_attempt_time"],
            unique=False,
            sqlite_where=DUE,
            postgresql_where=DUE,
        )


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index("ix_deliveries_due", ["state", "next_attempt_time"], unique=False)
