"""The JSON API under ``/v1_0``: the write path that changes counted rows, and the counts.

Every write commits to the database first and only then bumps the Redis counters
(see :mod:`toutiao.resources.transition`). Requests carry a JWT in the ``Authorization``
header (see :mod:`toutiao.resources.auth`).
"""

import logging

from flask import current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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


def configured():
    """Refuse to serve without the web app's settings; bound the request body.

    Checked per request rather than in the factory so that the ``flask stats`` commands,
    which build the same app, neither need nor read them.
    """
    from toutiao.resources.auth import signing_keys

    signing_keys()
    request.max_content_length = number(current_app.config, "MAX_CONTENT_LENGTH")


def too_large(exc):
    limit = request.max_content_length
    return jsonify(message=f"the request body must be at most {limit} bytes (MAX_CONTENT_LENGTH)"), 413


def misconfigured(exc: SettingError):
    log.error("refusing requests: %s", exc)
    return jsonify(message="the server is misconfigured; its log says how"), 500
