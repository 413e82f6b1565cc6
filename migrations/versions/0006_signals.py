"""signals: regenerated replies and corrections as alternatives of one prompt
(exchanges.regenerated_from, source, corrected_by) and how a vote was given (ratings.source)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 05:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Link alternatives of one prompt, mark corrections, and record each vote's source."""
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("regenerated_from", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="model", nullable=False)
        )
        batch_op.add_column(sa.Column("corrected_by", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_exchanges_regenerated_from"), ["regenerated_from"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_exchanges_corrected_by"), ["corrected_by"])
        batch_op.create_foreign_key(
            batch_op.f("fk_exchanges_regenerated_from_exchanges"),
            "exchanges",
            ["regenerated_from"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_exchanges_corrected_by_users"),
            "users",
            ["corrected_by"],
            ["id"],
            ondelete="CASCADE",
        )
    # Every vote so far came from a button or /good, /bad.
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=16), server_default="button", nullable=False)
        )


def downgrade() -> None:
    """Drop the links, the sources and the corrections' authors."""
    with op.batch_alter_table("ratings", schema=None) as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_exchanges_corrected_by_users"), type_="foreignkey")
        batch_op.drop_constraint(
            batch_op.f("fk_exchanges_regenerated_from_exchanges"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_exchanges_corrected_by"))
        batch_op.drop_index(batch_op.f("ix_exchanges_regenerated_from"))
        batch_op.drop_column("corrected_by")
        batch_op.drop_column("source")
        batch_op.drop_column("regenerated_from")
