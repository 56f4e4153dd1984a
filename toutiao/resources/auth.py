"""Who is asking: the ``X-User-Id`` header, a stand-in for the original app's JWT.

The original toutiao verifies a JWT and puts the user id on ``g``; here the client
sends the id itself. It is enough to drive the write path, and no protection at all.
"""

import functools
import re

from flask import g, request

from common.models import User
from toutiao.extensions import database
from toutiao.resources.errors import Forbidden, Unauthorized

HEADER = "X-User-Id"

_ID = re.compile(r"^[1-9][0-9]{0,19}$")


def login_required(view):
    """Refuse the request unless ``X-User-Id`` names an enabled user; set ``g.user_id``."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        raw = request.headers.get(HEADER, "").strip()
        if not _ID.match(raw):
            raise Unauthorized(f"send the {HEADER} header with your user id")
        user = database.session.get(User, int(raw))
        if user is None:
            raise Unauthorized(f"{HEADER} names no user")
        if user.status != User.STATUS.ENABLE:
            raise Forbidden("this user is disabled")
        g.user_id = int(raw)
        return view(*args, **kwargs)

    return wrapped
