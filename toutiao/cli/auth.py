"""``flask auth``: tokens for operators and tests."""

import click
from flask import current_app
from flask.cli import AppGroup

from toutiao import tokens
from toutiao.cli.errors import settings_checked

auth_cli = AppGroup("auth", help="Issue API tokens.")


@auth_cli.command("token")
@click.argument("user_id", type=click.IntRange(1, tokens.MAX_USER_ID))
@click.option("--refresh", is_flag=True, help="A refresh token (JWT_REFRESH_DAYS) instead of an access token.")
def token(user_id, refresh):
    """Print a token for USER_ID, signed with JWT_SECRET, alone on stdout."""
    with settings_checked():
        secret = tokens.keys(current_app.config, current_app.instance_path)[0]
        expires_in = tokens.lifetime(current_app.config, refresh)
    click.echo(tokens.mint(secret, user_id, expires_in, refresh=refresh))
