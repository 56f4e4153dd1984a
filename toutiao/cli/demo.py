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


@demo_cli.command("seed")
@click.option("--users", type=click.IntRange(10, 100_000), default=200, show_default=True, help="Users to create.")
@click.option("--reset", is_flag=True, help="Start over: drop the sample first (embedded defaults only).")
def seed(users, reset):
    """Fill an empty database with a sample and leave its Redis counters drifted."""
    if reset and (current_app.config.get("DATABASE_URL") or current_app.config.get("REDIS_URL")):
        raise ConfigError(
            "--reset drops tables and counters, so it only works on the embedded defaults; "
            "unset DATABASE_URL and REDIS_URL"
        )
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
