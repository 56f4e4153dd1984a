"""Tokens for the tests, minted as ``flask auth token`` mints them: with the app's own secret."""

from toutiao import tokens


def token_for(app, user_id, refresh=False) -> str:
    """Return a valid access (or refresh) token of ``app`` for ``user_id``."""
    secret = tokens.keys(app.config, app.instance_path)[0]
    return tokens.mint(secret, user_id, tokens.lifetime(app.config, refresh), refresh=refresh)


def bearer(token: str) -> dict:
    """Return the headers that send ``token``."""
    return {"Authorization": f"Bearer {token}"}


def as_user(app, user_id, refresh=False) -> dict:
    """Return the headers of a request sent by ``user_id``."""
    return bearer(token_for(app, user_id, refresh))
