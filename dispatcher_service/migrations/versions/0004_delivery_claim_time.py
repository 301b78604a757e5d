"""deliveries: when their lease was taken

A delivery whose lease runs out (its dispatcher was killed, or stalled) before an answer
was recorded gets an attempt row, marked interrupted, when it is claimed again; the time
of that attempt is when the lost lease was taken. Nullable and without a default, so
adding it rewrites nothing on either backend; a delivery leased before it existed is
timed a lease before it is claimed again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("claim_time", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "claim_time")
