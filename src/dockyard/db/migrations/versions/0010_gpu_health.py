"""Each GPU's health as NVML last showed it (`health`, `health_reason`): an unhealthy one takes no new placement.

Revision ID: 0010_gpu_health
Revises: 0009_worker_slots
Create Date: 2026-12-06 15:12:22.374997
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_gpu_health"
down_revision: str | None = "0009_worker_slots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    health = sa.Enum("healthy", "unhealthy", name="gpuhealth", native_enum=False, length=32)
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health", health, nullable=False, server_default="healthy"))
        batch_op.add_column(sa.Column("health_reason", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("gpus", schema=None) as batch_op:
        batch_op.drop_column("health_reason")
        batch_op.drop_column("health")
