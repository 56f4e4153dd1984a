"""Entry point: ``python manage.py stats fix`` works like ``flask stats fix``."""

from flask.cli import FlaskGroup

from toutiao import create_app

cli = FlaskGroup(create_app=create_app)

if __name__ == "__main__":
    cli()
