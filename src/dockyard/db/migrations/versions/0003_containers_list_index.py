"""The containers list's index covers its whole order (newest first, the id breaking ties), so a deep page skips
index entries rather than reading each skipped row.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:27:51.032142
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_containers_org_id_created_at", table_name="containers")
    op.create_index("ix_containers_org_id_created_at_id", "containers", ["org_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_containers_org_id_created_at_id", table_name="containers")
    op.create_index("ix_containers_org_id_created_at", "containers", ["org_id", "created_at"])
