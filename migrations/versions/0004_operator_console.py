"""operator console: audit log, per-user controls (block, ratings excluded), used login nonces

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the audit log, per-user controls and used login nonces."""
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
    op.create_table(
        "user_controls",
        sa.Column("user_key", sa.String(length=128), nullable=False),
        sa.Column("blocked", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("ratings_excluded", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_key", name=op.f("pk_user_controls")),
    )
    op.create_table(
        "web_login_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("user_key", sa.String(length=128), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_web_login_nonces")),
    )
    with op.batch_alter_table("web_login_nonces", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_web_login_nonces_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    """Drop the operator console's tables."""
    with op.batch_alter_table("web_login_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_login_nonces_expires_at"))
    op.drop_table("web_login_nonces")
    op.drop_table("user_controls")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_action"))
    op.drop_table("audit_log")
