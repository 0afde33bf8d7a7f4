"""What a starting worker's health probes saw (`last_probe_at`, `last_probe_result`), an async worker's first
webhook call (`first_seen_at`), and removed workers' output kept for a while (`worker_logs`).

Revision ID: 0007_worker_probes_logs
Revises: 0006
Create Date: 2026-12-06 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_worker_probes_logs"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_probe_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_probe_result", sa.String(length=64), nullable=False, server_default=""))
    op.create_table(
        "worker_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.String(length=36), nullable=False),
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("output", sa.LargeBinary(), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"], ["endpoints.id"], name=op.f("fk_worker_logs_endpoint_id_endpoints"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_logs")),
    )
    with op.batch_alter_table("worker_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_logs_endpoint_id"), ["endpoint_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_worker_logs_removed_at"), ["removed_at"], unique=False)


def downgrade() -> None:
    op.drop_table("worker_logs")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("last_probe_result")
        batch_op.drop_column("first_seen_at")
        batch_op.drop_column("last_probe_at")
