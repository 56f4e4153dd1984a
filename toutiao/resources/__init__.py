"""The JSON API under ``/v1_0``: the write path that changes counted rows, and the counts.

Every write commits to the database first and only then bumps the Redis counters
(see :mod:`toutiao.resources.transition`). Requests carry a JWT in the ``Authorization``
header (see :mod:`toutiao.resources.auth`).
"""

import logging

from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from toutiao import tokens
from toutiao.config import SettingError, number
from toutiao.resources.payload import IdConverter

log = logging.getLogger(__name__)


def register(app):
    """Register the API's blueprints, the id converter, the settings check and the JSON error responses."""
    from toutiao.resources import auth, health, news, user
    from toutiao.resources.errors import ApiError, api_error, http_error

    app.url_map.converters["id"] = IdConverter
    app.before_request(configured)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(user.bp)
    app.register_blueprint(news.bp)
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(SettingError, misconfigured)


#: The numeric settings only the web app reads.
WEB_NUMBERS = ("JWT_EXPIRY_HOURS", "JWT_REFRESH_DAYS", "MAX_CONTENT_LENGTH")


def check_web_settings(config) -> None:
    """Raise SettingError naming the first web-only setting that cannot be used."""
    tokens.require_secret(config)
    for name in WEB_NUMBERS:
        number(config, name)


def configured():
    """Refuse to serve without usable web settings; bound the request body.

    Checked on the first request rather than in the factory so that the ``flask stats``
    commands, which build the same app, neither need nor check them; once the settings
    pass, the body limit is kept and the check is not repeated. Until they pass, every
    request is refused.
    """
    limit = current_app.extensions.get("web.max_content_length")
    if limit is None:
        from toutiao.resources.auth import signing_keys

        check_web_settings(current_app.config)
        signing_keys()
        limit = current_app.extensions["web.max_content_length"] = number(current_app.config, "MAX_CONTENT_LENGTH")
    request.max_content_length = limit


def too_large(exc):
    limit = request.max_content_length
    return jsonify(message=f"the request body must be at most {limit} bytes (MAX_CONTENT_LENGTH)"), 413


def misconfigured(exc: SettingError):
    log.error("refusing requests: %s", exc)
    return jsonify(message="the server is misconfigured; its log says how"), 500
