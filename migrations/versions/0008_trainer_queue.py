"""trainer queue: queued training runs taken by ``selftune trainer`` workers (their host,
heartbeat and attempts), where the requester hears the result, and whether they did

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-07 05:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the queue's columns to ``training_runs`` (existing runs: taken once, announced)."""
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("notify_to", sa.String(length=300), nullable=True))
        batch_op.add_column(
            sa.Column("announced", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("output", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop the queue's columns; queued runs that no worker took end as interrupted."""
    op.execute(
        sa.text(
            "UPDATE training_runs SET status = 'interrupted', finished_at = CURRENT_TIMESTAMP "
            "WHERE status = 'queued'"
        )
    )
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        for column in ("output", "announced", "notify_to", "attempts", "heartbeat_at", "host"):
            batch_op.drop_column(column)
