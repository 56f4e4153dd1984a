"""Fixtures mirroring the app factory: app -> engine/redis -> runner, on the real servers.

The suite runs against the real MariaDB and Redis (TEST_DATABASE_URL, TEST_REDIS_URL;
defaults: the local test database and Redis db 15). A server that is not there fails
the run: nothing is skipped.
"""

import os

import pytest
import redis as redis_py
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from common.cache.engine import RepairEngine
from common.cache.statistic import COUNTERS
from common.demo import drift_counters, seed_database
from common.models import Base
from toutiao import create_app
from toutiao.config import TestConfig

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _ensure_database(url):
    """Create the test database if it does not exist (MariaDB only)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("mysql") or not parsed.database:
        return
    server = create_engine(parsed.set(database=""))
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`"))
    server.dispose()


@pytest.fixture(scope="session")
def db_engine():
    """The test database with empty toutiao tables, created once per session."""
    _ensure_database(DATABASE_URL)
    engine = create_engine(DATABASE_URL, pool_size=10, max_overflow=10)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_engine):
    """The test database, emptied before each test."""
    with db_engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return db_engine


@pytest.fixture
def redis():
    """The test Redis database, flushed before and after each test."""
    client = redis_py.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def config():
    cfg = TestConfig()
    cfg.DATABASE_URL = DATABASE_URL
    cfg.REDIS_URL = REDIS_URL
    return cfg


@pytest.fixture
def app(config, engine, redis):
    return create_app(config)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def drifted(engine, redis):
    """A sample of 40 users whose counters were exact, then drifted every way the fix handles."""
    seed_database(engine, users=40)
    RepairEngine(redis, engine, settle=0.01).run(COUNTERS)
    drift_counters(redis)
    return engine
