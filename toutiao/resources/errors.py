"""Errors the API answers with a status code and a JSON body ``{"message": ...}``."""

from flask import jsonify


class ApiError(Exception):
    """A request the API refuses; raising it inside a transition rolls the transition back."""

    status = 400
    #: Response headers the status calls for.
    headers = {}

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    # RFC 6750: a 401 names the scheme that would be accepted.
    headers = {"WWW-Authenticate": 'Bearer realm="toutiao"'}


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """The row is already in the state asked for (a duplicate or a cancelled action)."""

    status = 409


def api_error(exc: ApiError):
    return jsonify(message=exc.message), exc.status, exc.headers


def http_error(exc):
    """Answer Flask's own errors (unknown route, wrong method, bad JSON) in JSON too."""
    return jsonify(message=exc.description), exc.code
