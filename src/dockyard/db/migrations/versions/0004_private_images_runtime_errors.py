"""Image repositories pulled with registry credentials, per IDC (re-pulled with each requester's credentials from
then on), and an IDC's runtime error as the reconciling server last saw it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 10:02:11.518240
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "private_images",
        sa.Column("idc_id", sa.String(length=50), nullable=False),
        sa.Column("repository", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["idc_id"], ["idcs.id"], name=op.f("fk_private_images_idc_id_idcs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("idc_id", "repository", name=op.f("pk_private_images")),
    )
    with op.batch_alter_table("idcs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtime_error", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("runtime_error_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idcs", schema=None) as batch_op:
        batch_op.drop_column("runtime_error_since")
        batch_op.drop_column("runtime_error")
    op.drop_table("private_images")
