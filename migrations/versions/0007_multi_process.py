"""multi process: each delivery's chat (a chat's updates handled in order by one process at a
time), and the per-user rate events counted across processes on PostgreSQL

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-07 05:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add deliveries.chat_key (existing rows: NULL, handled as before) and rate_events."""
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chat_key", sa.String(length=128), nullable=True))
        batch_op.create_index(
            "ix_deliveries_chat_pending", ["platform", "chat_key", "done"], unique=False
        )
    op.create_table(
        "rate_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rate_events")),
    )
    with op.batch_alter_table("rate_events", schema=None) as batch_op:
        batch_op.create_index("ix_rate_events_user_at", ["user_key", "at"], unique=False)


def downgrade() -> None:
    """Drop rate_events and deliveries.chat_key."""
    with op.batch_alter_table("rate_events", schema=None) as batch_op:
        batch_op.drop_index("ix_rate_events_user_at")
    op.drop_table("rate_events")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_chat_pending")
        batch_op.drop_column("chat_key")
