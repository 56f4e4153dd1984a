"""The JSON API under ``/v1_0``: the write path that changes counted rows, and the counts.

Every write commits to the database first and only then bumps the Redis counters
(see :mod:`toutiao.resources.transition`). Requests name their user with the
``X-User-Id`` header (see :mod:`toutiao.resources.auth`).
"""

from werkzeug.exceptions import HTTPException


def register(app):
    """Register the API's blueprints and its JSON error responses."""
    from toutiao.resources import health, news, user
    from toutiao.resources.errors import ApiError, api_error, http_error

    app.register_blueprint(health.bp)
    app.register_blueprint(user.bp)
    app.register_blueprint(news.bp)
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(HTTPException, http_error)
