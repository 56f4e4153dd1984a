"""The JSON the API reads and writes: ``{"message": "OK", "data": ...}`` as in the original app.

Every value is checked here before it reaches SQL: ids within the columns' range, text
within its column's length.
"""

from flask import jsonify, request
from werkzeug import exceptions
from werkzeug.routing import BaseConverter

from common.cache.members import MAX_SIGNED_ID, is_id
from toutiao.resources.errors import BadRequest

#: The largest id: the models' ids are BIGINT, unsigned on MySQL but signed on SQLite,
#: so the common range is 1 to 2**63 - 1.
MAX_ID = MAX_SIGNED_ID


def body() -> dict:
    """Return the request's JSON object; 413 if it is over the request's max_content_length."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    # A body without Content-Length (chunked) is cut off at the limit rather than refused
    # (Werkzeug's LimitedStream): refuse it here if anything follows the cut.
    cut = request.content_length is None and limit is not None and len(data) >= limit
    if cut and request.environ["wsgi.input"].read(1):
        raise exceptions.RequestEntityTooLarge()
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("send a JSON object with Content-Type: application/json")
    return data


def valid_id(value) -> bool:
    """Tell whether ``value`` is an id the API takes: an integer from 1 to MAX_ID."""
    return is_id(value, MAX_ID)


def id_field(data: dict, name: str = "target") -> int:
    """Return ``data[name]`` as an id: an integer from 1 to MAX_ID."""
    value = data.get(name)
    if not valid_id(value):
        raise BadRequest(f"{name!r} must be an integer id from 1 to {MAX_ID}")
    return value


def text_field(data: dict, name: str, max_length: int) -> str:
    """Return ``data[name]`` as non-blank text of at most ``max_length`` characters."""
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{name!r} must be non-empty text")
    if len(value) > max_length:
        raise BadRequest(f"{name!r} must be at most {max_length} characters, got {len(value)}")
    return value


class IdConverter(BaseConverter):
    """``<id:name>`` in a route: digits, answered 400 unless from 1 to MAX_ID."""

    regex = r"\d+"

    def to_python(self, value):
        number = int(value) if len(value) <= len(str(MAX_ID)) else 0
        if not valid_id(number):
            # Raised while the URL is matched, before the API's own errors apply: Werkzeug's.
            raise exceptions.BadRequest(f"an id in the path must be from 1 to {MAX_ID}, got {value[:40]}")
        return number


def ok(data=None, status: int = 200):
    if status == 204:
        return "", 204
    return jsonify(message="OK", data=data), status
