"""``flask db``: manage the database schema."""

import click
from flask.cli import AppGroup

from common.models import Base
from toutiao.cli.connect import connect_database

db_cli = AppGroup("db", help="Manage the database schema.")


@db_cli.command("create")
def create():
    """Create the toutiao tables that do not exist yet (existing ones are left alone)."""
    engine = connect_database()
    Base.metadata.create_all(engine)
    click.echo(f"tables ready: {', '.join(sorted(Base.metadata.tables))}")
