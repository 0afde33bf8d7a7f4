"""Quotas and capacity: the operator's per-organization limits, each node's CPUs and memory for placement, and
an index that counts an organization's queued jobs (it replaces the index on the organization alone).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 04:30:09.254637
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organization_quotas",
        sa.Column("org_id", sa.String(length=36), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("containers", sa.Integer(), nullable=True),
        sa.Column("endpoints", sa.Integer(), nullable=True),
        sa.Column("workers", sa.Integer(), nullable=True),
        sa.Column("storage_gb", sa.Integer(), nullable=True),
        sa.Column("queued_jobs", sa.Integer(), nullable=True),
        sa.Column("modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_organization_quotas_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_organization_quotas")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_org_id"))
        batch_op.create_index("ix_jobs_org_id_status", ["org_id", "status"], unique=False)
    # Existing nodes start unknown (0); the reconcilers fill them in from the engine on their next pass.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpus", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("memory_mb", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("memory_mb")
        batch_op.drop_column("cpus")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_org_id_status")
        batch_op.create_index(batch_op.f("ix_jobs_org_id"), ["org_id"], unique=False)
    op.drop_table("organization_quotas")
