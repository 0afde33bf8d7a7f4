"""The lease's fencing token and times (`token`, `acquired_at`, `renewed_at`, `first_pass_at`), and the live
processes (`processes`).

Revision ID: 0008_leases_processes
Revises: 0007_worker_probes_logs
Create Date: 2026-12-06 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_leases_processes"
down_revision: str | None = "0007_worker_probes_logs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "processes",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column(
            "kind", sa.Enum("server", "gateway", name="processkind", native_enum=False, length=32), nullable=False
        ),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "state",
            sa.Enum("serving", "draining", "lost", name="processstate", native_enum=False, length=32),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processes")),
    )
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processes_heartbeat_at"), ["heartbeat_at"], unique=False)
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("first_pass_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("first_pass_at")
        batch_op.drop_column("renewed_at")
        batch_op.drop_column("acquired_at")
        batch_op.drop_column("token")
    op.drop_table("processes")
