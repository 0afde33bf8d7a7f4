"""A job's `ttl` is its lifetime from submission (RunPod's policy.ttl) and its result is kept `keep_ms` once it has
finished; `low_priority` jobs (RunPod's policy.lowPriority) never make their endpoint add a worker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_ms", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("low_priority", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("low_priority")
        batch_op.drop_column("keep_ms")
