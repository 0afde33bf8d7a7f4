"""Persistence: SQLAlchemy 2 models, the session factories, and Alembic migrations."""
