"""one running training run and one running A/B test, across processes (partial unique indexes)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("training_runs", "ab_tests")


def _interrupt_extra_running() -> None:
    """Before the index: should a database hold several ``running`` rows (the race this
    migration closes), all but the newest end as interrupted (training) or replaced (A/B)."""
    ended = {"training_runs": ("interrupted", "finished_at"), "ab_tests": ("replaced", "ended_at")}
    for table in TABLES:
        status, when = ended[table]
        op.execute(
            sa.text(
                f"UPDATE {table} SET status = '{status}', {when} = CURRENT_TIMESTAMP "
                f"WHERE status = 'running' AND id < "
                f"(SELECT MAX(id) FROM {table} WHERE status = 'running')"
            )
        )


def upgrade() -> None:
    """End all but the newest running row, then allow only one running row per table."""
    _interrupt_extra_running()
    running = sa.text("status = 'running'")
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(
                f"uq_{table}_one_running",
                ["status"],
                unique=True,
                sqlite_where=running,
                postgresql_where=running,
            )


def downgrade() -> None:
    """Drop the one-running indexes (the rows ended by the upgrade stay ended)."""
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"uq_{table}_one_running")
