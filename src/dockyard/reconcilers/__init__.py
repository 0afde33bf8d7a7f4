"""Reconcilers: one loop per resource kind converging the runtime towards the database's desired state."""
