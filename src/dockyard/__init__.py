"""Dockyard: a self-hosted GPU cloud.

GPU containers with a real lifecycle (GMI Cloud's API) and autoscaled serverless GPU endpoints (PPIO's API),
served from one process on SQLite and the local container engine, or from a fleet on PostgreSQL.
"""

__version__ = "0.1.0"
