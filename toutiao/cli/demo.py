"""``flask demo``: fill an empty database with a sample and drift its counters."""

import click
from flask import current_app
from flask.cli import AppGroup

from common.cache.engine import RepairEngine
from common.cache.statistic import COUNTERS
from common.demo import database_is_empty, drift_counters, seed_database
from common.models import Base
from toutiao.cli.connect import connect_database, connect_redis
from toutiao.cli.errors import ConfigError

demo_cli = AppGroup("demo", help="Sample data for trying the app out.")


ALLOW_REAL_SERVERS = "--allow-real-servers"


@demo_cli.command("seed")
@click.option("--users", type=click.IntRange(10, 100_000), default=200, show_default=True, help="Users to create.")
@click.option("--reset", is_flag=True, help="Start over: drop the sample first (embedded defaults only).")
@click.option(
    ALLOW_REAL_SERVERS,
    "allow_real_servers",
    is_flag=True,
    help="Seed the servers DATABASE_URL and REDIS_URL name (an empty database; its Redis counters are overwritten).",
)
def seed(users, reset, allow_real_servers):
    """Fill an empty database with a sample and leave its Redis counters drifted."""
    refuse_servers_it_must_not_touch(current_app.config, reset, allow_real_servers)
    engine = connect_database()
    redis = connect_redis()
    if reset:
        Base.metadata.drop_all(engine)
        for counter in COUNTERS:
            redis.unlink(counter.key)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        if not database_is_empty(conn):
            raise ConfigError("the database already holds users or articles; demo seed only fills an empty database")
    summary = seed_database(engine, users=users)
    click.echo(
        f"seeded {summary.users} users, {summary.articles} articles, {summary.relations} relations, "
        f"{summary.collections} collections, {summary.attitudes} attitudes, {summary.comments} comments, "
        f"{summary.comment_likes} comment likes"
    )
    for counter in COUNTERS:
        redis.unlink(counter.key)
    RepairEngine(redis, engine, settle=0).run(COUNTERS)  # the counters as the app would have kept them
    for line in drift_counters(redis):
        click.echo(f"drifted {line}")


def refuse_servers_it_must_not_touch(config, reset, allow_real_servers):
    """Raise ConfigError (exit 2) before any connection unless both servers are the embedded
    defaults, or both are configured and the flag says so: the counters it writes must be
    those of the database it seeds."""
    real_database = bool(config.get("DATABASE_URL"))
    redis_setting = "REDIS_URL" if config.get("REDIS_URL") else "REDIS_SENTINELS"
    real_redis = bool(config.get(redis_setting))
    if reset and (real_database or real_redis):
        raise ConfigError(
            "--reset drops tables and counters, so it only works on the embedded defaults; "
            "unset DATABASE_URL and REDIS_URL"
        )
    if real_database != real_redis:
        configured, unset = ("DATABASE_URL", "REDIS_URL") if real_database else (redis_setting, "DATABASE_URL")
        raise ConfigError(
            f"{configured} is set but {unset} is not: demo seed would write the counters of one Redis "
            "from another database; set both or neither"
        )
    if real_database and not allow_real_servers:
        raise ConfigError(
            "DATABASE_URL and REDIS_URL name real servers and demo seed writes sample data and counters; "
            f"pass {ALLOW_REAL_SERVERS} to seed an empty database there, or unset both for the embedded defaults"
        )
