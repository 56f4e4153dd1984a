"""Probes for the orchestrator: liveness without dependencies, readiness with them."""

from flask import Blueprint
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from toutiao.extensions import database, redis_client

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Answer while the process serves requests; never touches the database or Redis."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """Answer 200 when the database and Redis both respond, else 503 naming the one that does not."""
    failing = []
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError):
        failing.append("database")
    try:
        redis_client.client.ping()
    except (RedisError, OSError):
        failing.append("redis")
    if failing:
        return {"status": "unavailable", "failing": failing}, 503
    return {"status": "ok"}
