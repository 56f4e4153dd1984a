"""flask demo seed touches only the embedded defaults, or both configured servers when told to."""

import pytest
from sqlalchemy import func, select

from common.models import User
from tests.expected import wrong_members
from tests.test_cli_stats import assert_one_line_error
from toutiao import create_app


def redis_contents(redis) -> dict:
    """Every key of the test Redis database with its type and serialized value."""
    return {key: (redis.type(key), redis.dump(key)) for key in redis.scan_iter()}


def users(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(User)).scalar()


@pytest.fixture
def live_counters(redis):
    """Counters and another key already on the real test Redis, as production would have them."""
    redis.zadd("count:user:arts", {"1": 5, "2": 3})
    redis.zadd("count:art:liking", {"10": 7})
    redis.set("session:1", "someone")
    return redis_contents(redis)


def seed(config, monkeypatch, tmp_path, *args, **overrides):
    monkeypatch.setenv("TOUTIAO_INSTANCE_PATH", str(tmp_path / "instance"))
    for name, value in overrides.items():
        setattr(config, name, value)
    return create_app(config).test_cli_runner().invoke(args=["demo", "seed", "--users", "10", *args])


@pytest.mark.parametrize("flags", [[], ["--allow-real-servers"]], ids=["no-flag", "allow-real-servers"])
def test_a_real_redis_without_database_url_is_refused_and_left_untouched(
    config, engine, live_counters, redis, monkeypatch, tmp_path, flags
):
    result = seed(config, monkeypatch, tmp_path, *flags, DATABASE_URL=None)

    assert_one_line_error(result, 2, "REDIS_URL is set but DATABASE_URL is not")
    assert redis_contents(redis) == live_counters
    assert not (tmp_path / "instance" / "toutiao.sqlite3").exists()


def test_a_real_database_with_the_embedded_redis_is_refused_and_left_empty(config, engine, monkeypatch, tmp_path):
    result = seed(config, monkeypatch, tmp_path, "--allow-real-servers", REDIS_URL=None)

    assert_one_line_error(result, 2, "DATABASE_URL is set but REDIS_URL is not")
    assert users(engine) == 0
    assert not (tmp_path / "instance" / "redis.db").exists()


def test_real_servers_without_the_flag_are_refused_and_left_untouched(
    config, engine, live_counters, redis, monkeypatch, tmp_path
):
    result = seed(config, monkeypatch, tmp_path)

    assert_one_line_error(result, 2, "--allow-real-servers")
    assert redis_contents(redis) == live_counters
    assert users(engine) == 0


def test_a_sentinel_redis_counts_as_a_real_one(config, engine, live_counters, redis, monkeypatch, tmp_path):
    result = seed(config, monkeypatch, tmp_path, DATABASE_URL=None, REDIS_URL=None, REDIS_SENTINELS="127.0.0.1:1")

    assert_one_line_error(result, 2, "REDIS_SENTINELS is set but DATABASE_URL is not")
    assert redis_contents(redis) == live_counters


def test_real_servers_with_the_flag_seed_an_empty_database_and_drift_its_counters(
    config, engine, redis, monkeypatch, tmp_path
):
    result = seed(config, monkeypatch, tmp_path, "--allow-real-servers")

    assert result.exit_code == 0, result.output
    assert users(engine) == 10
    assert "count:user:arts" in wrong_members(engine, redis)


def test_real_servers_with_the_flag_refuse_a_database_that_has_data_and_leave_redis_untouched(
    config, drifted, redis, monkeypatch, tmp_path
):
    before = redis_contents(redis)

    result = seed(config, monkeypatch, tmp_path, "--allow-real-servers")

    assert_one_line_error(result, 2, "empty database")
    assert redis_contents(redis) == before
