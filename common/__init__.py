"""Library shared by the toutiao app and its jobs: models, counters, the repair engine.

Nothing here imports Flask's ``current_app``: callers pass their Redis client and
SQLAlchemy engine or session in.
"""
