"""delivery: platform updates stored before they are confirmed, and one stored copy of a
message delivered again (messages.source_key, unique)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the delivery log and a unique source key per stored message."""
    op.create_table(
        "deliveries",
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("reply_ref", sa.String(length=64), nullable=True),
        sa.Column("done", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform", "key", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_pending", ["platform", "done"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_deliveries_received_at"), ["received_at"], unique=False
        )
    # Existing rows keep NULL (they predate the key): nothing to de-duplicate.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_key", sa.String(length=256), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_messages_source_key"), ["source_key"])


def downgrade() -> None:
    """Drop the delivery log and the source key."""
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_messages_source_key"), type_="unique")
        batch_op.drop_column("source_key")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_received_at"))
        batch_op.drop_index("ix_deliveries_pending")
    op.drop_table("deliveries")
