"""Each worker's request slots, leased to gateway processes (`worker_slots`), so that
`max_concurrent_per_worker` holds across every gateway on the database.

Revision ID: 0009_worker_slots
Revises: 0008_leases_processes
Create Date: 2026-12-06 13:56:13.293842
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_worker_slots"
down_revision: str | None = "0008_leases_processes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_slots",
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wanted_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["workers.id"], name=op.f("fk_worker_slots_worker_id_workers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("worker_id", "slot", name=op.f("pk_worker_slots")),
    )


def downgrade() -> None:
    op.drop_table("worker_slots")
