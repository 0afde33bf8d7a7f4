"""Alembic environment: always driven by `dockyard.db.migrate`, which hands over an open connection."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context

import dockyard.db.models  # noqa: F401  (registers the tables on Base.metadata)
from dockyard.db.base import Base, UTCDateTime


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Migrations must not import application types: render the storage type they decorate.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table instead
    compare_type=True,
    render_item=_render_item,
)
with context.begin_transaction():
    context.run_migrations()
