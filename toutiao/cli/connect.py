"""Open the configured database and Redis, turning every failure into a one-line error."""

from redis.exceptions import ReadOnlyError, RedisError
from sqlalchemy import inspect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from common.models import Base
from toutiao.cli.errors import ConfigError, RuntimeFailure
from toutiao.config import SettingError
from toutiao.extensions import database, redis_client
from toutiao.logs import mask_url


def connect_database(require_tables=False):
    """Return the engine after a round trip to the database; check the tables if asked."""
    try:
        engine = database.engine
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError(
            f"DATABASE_URL is malformed ({_first_line(exc)}); expected e.g. mysql+pymysql://user:pass@host:3306/toutiao"
        ) from None
    except ImportError as exc:
        raise ConfigError(
            f"DATABASE_URL names a driver that is not installed ({exc.name}); use mysql+pymysql://"
        ) from None
    url = mask_url(engine.url.render_as_string(hide_password=True))
    try:
        with engine.connect() as conn:
            missing = [t for t in Base.metadata.tables if not inspect(conn).has_table(t)] if require_tables else []
    except SQLAlchemyError as exc:
        raise RuntimeFailure(f"cannot reach the database at {url}: {_first_line(exc)}") from None
    if missing:
        raise ConfigError(
            f"the database at {url} has no table {missing[0]}; "
            "point DATABASE_URL at the toutiao database or run 'flask db create'"
        )
    return engine


def connect_redis():
    """Return the Redis client after a PING."""
    shown = mask_url(redis_client.description)
    try:
        client = redis_client.client
    except SettingError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL is malformed ({_first_line(exc)}); expected e.g. redis://host:6379/0") from None
    except (RedisError, OSError) as exc:
        raise RuntimeFailure(f"cannot start {shown}: {_first_line(exc)}") from None
    try:
        client.ping()
    except RedisError as exc:
        raise RuntimeFailure(f"cannot reach Redis at {shown}: {_first_line(exc)}") from None
    return client


def redis_failure(exc) -> RuntimeFailure:
    """Turn a Redis error met mid-command into a one-line runtime failure naming the server."""
    shown = mask_url(redis_client.description)
    if isinstance(exc, ReadOnlyError):
        return RuntimeFailure(
            f"Redis at {shown} is a read-only replica (a failover?); "
            "point REDIS_URL at the master, or use REDIS_SENTINELS"
        )
    return RuntimeFailure(f"Redis at {shown} failed: {_first_line(exc)}")


def _first_line(exc) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return mask_url(text.splitlines()[0])
