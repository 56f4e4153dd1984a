"""Who is asking: ``Authorization: Bearer <JWT>``, checked as the original toutiao does.

:func:`login_required` accepts access tokens only; ``PUT /v1_0/authorizations`` trades a
refresh token for a new access token. See :mod:`toutiao.tokens` for what a valid token is.
"""

import functools

from flask import Blueprint, current_app, g, request

from common.models import User
from toutiao import tokens
from toutiao.extensions import database
from toutiao.resources.errors import Forbidden, Unauthorized
from toutiao.resources.payload import ok

bp = Blueprint("auth", __name__, url_prefix="/v1_0")


def signing_keys() -> list[str]:
    """Return the app's token secrets (read once per app), the signing one first."""
    found = current_app.extensions.get("jwt.keys")
    if found is None:
        found = current_app.extensions["jwt.keys"] = tokens.keys(current_app.config, current_app.instance_path)
    return found


def authenticated_user(refresh: bool = False) -> int:
    """Return the id of the enabled user the request's bearer token names.

    Raise Unauthorized (401) for a missing or invalid token or one of the wrong kind,
    Forbidden (403) for a disabled user.
    """
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the header Authorization: Bearer <token>")
    try:
        user_id = tokens.verify(token.strip(), signing_keys(), refresh=refresh)
    except tokens.TokenError as exc:
        raise Unauthorized(str(exc)) from None
    user = database.session.get(User, user_id)
    if user is None:
        raise Unauthorized("the token names no user")
    if user.status != User.STATUS.ENABLE:
        raise Forbidden("this user is disabled")
    return user_id


def login_required(view):
    """Refuse the request unless it carries an enabled user's access token; set ``g.user_id``."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        g.user_id = authenticated_user()
        return view(*args, **kwargs)

    return wrapped


@bp.put("/authorizations")
def refresh():
    """Trade the refresh token in the Authorization header for a new access token."""
    user_id = authenticated_user(refresh=True)
    token = tokens.mint(signing_keys()[0], user_id, tokens.lifetime(current_app.config, refresh=False))
    return ok({"token": token}, 201)
