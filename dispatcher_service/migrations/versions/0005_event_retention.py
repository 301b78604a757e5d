"""events: what pruning and payload expunge walk, and when a payload was expunged

Pruning deletes finished events oldest first, with their deliveries: an index on
events(create_time) to walk them, one on deliveries(event_id) to find (and delete) an
event's deliveries. Expunging walks, oldest first, the events still holding a payload: a
partial index over those only, so expunged events are not read again at every run.

`payload_expunge_time` is nullable and without a default: adding it rewrites nothing on
either backend (on SQLite altering a column copies the table; adding one does not).

Building the indexes holds up writes to these tables on PostgreSQL while it runs; a
large database can have the column added and the indexes built beforehand (CREATE INDEX
CONCURRENTLY, under the same names), and then this finds them there.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

NOT_EXPUNGED = sa.text("payload_expunge_time IS NULL")


def upgrade() -> None:
    # Added beforehand by hand, perhaps (see above); SQLite has no ADD COLUMN IF NOT EXISTS.
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("events")}
    if "payload_expunge_time" not in columns:
        op.add_column(
            "events", sa.Column("payload_expunge_time", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_index("ix_events_created", "events", ["create_time"], if_not_exists=True)
    op.create_index(
        "ix_events_payload_created",
        "events",
        ["create_time"],
        sqlite_where=NOT_EXPUNGED,
        postgresql_where=NOT_EXPUNGED,
        if_not_exists=True,
    )
    op.create_index("ix_deliveries_event", "deliveries", ["event_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_deliveries_event", table_name="deliveries")
    op.drop_index("ix_events_payload_created", table_name="events")
    op.drop_index("ix_events_created", table_name="events")
    op.drop_column("events", "payload_expunge_time")
